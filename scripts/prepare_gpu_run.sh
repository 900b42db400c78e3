#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what benchmarks/gpu_run.sh needs on a CUDA machine that has torch
# but no package index: diffusers' wheel, imageio-ffmpeg's Python code, and imageio-ffmpeg's static
# ffmpeg compressed with xz -9 (172 MB -> 48 MB, ~4 min), so the checkout travels in < 64 MiB.
# Run it here, where pip can download:   bash scripts/prepare_gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIFFUSERS=${DIFFUSERS:-$($PY -c "import diffusers; print(diffusers.__version__)" 2>/dev/null || echo 0.42.1)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp" "diffusers==$DIFFUSERS" "imageio-ffmpeg>=0.5"
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/site
mv "$tmp"/diffusers-*.whl .gpu/wheels/  # installed there from the wheel (unpacked it would not fit)
(cd .gpu/site && $PY -m zipfile -e "$tmp"/imageio_ffmpeg-*.whl .)
binary=$(ls .gpu/site/imageio_ffmpeg/binaries/ffmpeg-* | head -1)
xz -9 -c "$binary" > .gpu/ffmpeg.xz
rm -f .gpu/site/imageio_ffmpeg/binaries/ffmpeg-*
du -sh .gpu
echo "now, on the GPU machine: bash benchmarks/gpu_run.sh   (carry .gpu)"
