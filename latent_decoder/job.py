"""Ray Job entrypoint: decode one experiment on the cluster the job runs in.

    python -m latent_decoder.job EXP [decode options]     (what ``latent-decoder submit`` runs)
    python jobs/decode_job.py EXP [decode options]         (the same, for ``ray job submit`` and KubeRay)

It is ``latent-decoder decode`` with ``--address auto`` added unless an address is given, so the
job's driver joins the job's own cluster; its exit status is decode's, so the job fails when
steps fail.
"""
from __future__ import annotations

import sys

from .submit import job_args


def main(argv: list[str] | None = None) -> None:
    from .cli import cli

    cli.main(job_args(sys.argv[1:] if argv is None else argv), prog_name="latent-decoder")


if __name__ == "__main__":
    main()
