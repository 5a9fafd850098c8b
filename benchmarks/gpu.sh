#!/usr/bin/env bash
# One prepared run (< 8 minutes) for a single H100/H200 machine, JAX backend:
#  1. ResNet-50-CIFAR train-step time, dense vs DST-EE (90%), updates every 100 and 4 steps;
#  2. a short-schedule accuracy of dense, RigL and DST-EE at 90% on the CIFAR-10 subset.
# Usage: bash benchmarks/gpu.sh [DATA.npz] [OUT_DIR]
#   DATA defaults to ../shared/data/cifar10.npz. The device machine has JAX but no keras:
#   carry wheels in .whl/ (see the device tool's README); they are installed if present.
#   GPU_SH_TINY=1 runs a seconds-long version (for checking the script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/cifar10.npz}"
out="${2:-${OUT:-benchmarks/results}}"
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax CIFAR10="$data"
python3 -c "import jax; print('devices:', jax.devices())"
if [ "${GPU_SH_TINY:-0}" = 1 ]; then
  steps=4; repeats=1; epochs=1; size=512; model=small_cnn
else
  steps=60; repeats=3; epochs=6; size=20000; model=resnet50_cifar
fi
python3 benchmarks/overhead.py --model "$model" --steps "$steps" --repeats "$repeats" --warmup 3 \
  --out "$out/gpu_overhead.json" \
  | tee "$out/gpu_overhead.txt"
python3 benchmarks/accuracy.py --methods dense rigl dstee --sparsities 0.9 --seeds 0 \
  --epochs "$epochs" --train-size "$size" --model "$model" --out "$out/gpu_accuracy.json" \
  | tee "$out/gpu_accuracy.txt"
