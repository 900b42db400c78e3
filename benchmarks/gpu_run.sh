#!/usr/bin/env bash
# The GPU figures BENCHMARKS.md asks for, in one command, on a machine with a CUDA build of torch:
#   bash benchmarks/gpu_run.sh [OUT [STEP...]]   figures and logs land in OUT (default: gpu-figures/)
# STEPs (default: all, ~8-10 min on an H200): device equivalence wan_decode_path_bf16
# wan_decode_path_fp32 bench tiny_full_size.
# Runs: the CUDA-only test of the worker's Wan path in strict fp32 and bf16, Wan's decode paths at
# full size in bf16 and fp32 (time and peak against vae.decode), `latent-decoder bench --full`, and
# the tiny decoder against vae.decode at 61x480x848 (issue 18's 20x goal).
# Uses latent-decoder as installed (make install with a CUDA torch) or, where .gpu/ exists
# (scripts/prepare_gpu_run.sh, for a machine without a package index), the code carried there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-figures}
only=" ${*:2} "
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .gpu/site ]; then
    site=/tmp/latent-decoder-site
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="$site:$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if [ -f .gpu/ffmpeg.xz ]; then
        xz -dc .gpu/ffmpeg.xz > /tmp/latent-decoder-ffmpeg && chmod +x /tmp/latent-decoder-ffmpeg
        export IMAGEIO_FFMPEG_EXE=/tmp/latent-decoder-ffmpeg
    fi
fi
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')" || exit 1

status=0
step() {  # step NAME COMMAND...: run, show, keep the output as OUT/NAME.txt
    local name=$1
    shift
    [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "== $name FAILED"; status=1; }
}
step device $PY -c "import torch, diffusers; print(torch.cuda.get_device_name(0), '| torch', torch.__version__, '| cuda', torch.version.cuda, '| diffusers', diffusers.__version__)"
step equivalence $PY -m pytest -q -p no:cacheprovider tests/test_wan_stream.py
step wan_decode_path_bf16 $PY benchmarks/wan_decode_path.py --full --dtype bfloat16
step wan_decode_path_fp32 $PY benchmarks/wan_decode_path.py --full --dtype float32
step bench $PY -m latent_decoder bench --full --device cuda
step tiny_full_size $PY benchmarks/tiny_full_size.py --device cuda
exit $status
