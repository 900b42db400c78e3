#!/usr/bin/env python3
"""Ray Job entrypoint for ``ray job submit`` and the KubeRay RayJob: decode EXP on this job's cluster.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml \
        -- python jobs/decode_job.py /data/EXP [decode options]

See ``latent_decoder.job``; ``latent-decoder submit`` runs the same code.
"""
from latent_decoder.job import main

if __name__ == "__main__":
    main()
