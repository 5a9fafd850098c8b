#!/usr/bin/env bash
# One prepared run (< 8 minutes) for a single H100/H200 machine, JAX backend: the
# comparison that matters most at scale, ResNet-50-CIFAR at sparsity 0.98 with many
# mask updates, RigL vs DST-EE, 3 seeds (paired by seed), on the CIFAR-10 subset.
# Usage: bash benchmarks/gpu.sh [DATA.npz] [OUT_DIR]
#   DATA defaults to ../shared/data/cifar10.npz. The device machine has JAX but no keras:
#   carry wheels in .whl/ (see the device tool's README); they are installed if present.
#   EPOCHS (default 4) sets the epochs per run; the script prints each run's seconds, so a
#   first run tells how many fit. GPU_SH_OVERHEAD=1 adds the train-step overhead check.
#   GPU_SH_TINY=1 runs a seconds-long version (for checking the script on a CPU).
#   GPU_SH_PARTS (default "exploration training_cost") picks the parts; each takes
#   about 7 minutes on an H100, so a 15-minute session runs one or both.
#   training_cost: shrink=True against dense, whole runs (benchmarks/training_cost.py).
#   PYTHON (default python3) is the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/cifar10.npz}"
out="${2:-${OUT:-benchmarks/results}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax CIFAR10="$data"
"$py" -c "import jax; print('devices:', jax.devices())"
if [ "${GPU_SH_TINY:-0}" = 1 ]; then
  model=small_cnn; size=512; epochs=1; seeds="0"; freq=2; steps=4; repeats=1
else
  model=resnet50_cifar; size=20000; epochs="${EPOCHS:-4}"; seeds="0 1 2"; freq=20; steps=60; repeats=3
fi
if [ "${GPU_SH_OVERHEAD:-0}" = 1 ]; then
  "$py" benchmarks/overhead.py --model "$model" --steps "$steps" --repeats "$repeats" --warmup 3 \
    --out "$out/gpu_overhead.json" | tee "$out/gpu_overhead.txt"
fi
parts="${GPU_SH_PARTS:-exploration training_cost}"
if [[ " $parts " == *" exploration "* ]]; then
  # shellcheck disable=SC2086  # seeds is a list
  "$py" benchmarks/exploration_regimes.py --models "$model" --variants rigl dstee \
    --sparsities 0.98 --seeds $seeds --epochs "$epochs" --train-size "$size" --update-freq "$freq" \
    --out "$out/gpu_exploration.json" | tee "$out/gpu_exploration.txt"
fi
if [[ " $parts " == *" training_cost "* ]]; then
  if [ "${GPU_SH_TINY:-0}" = 1 ]; then
    cost="--model small_cnn --epochs 4 --steps-per-epoch 2 --batch 16 --repeats 1"
  else
    cost="--model resnet50_cifar --epochs 8 --steps-per-epoch 20 --batch 128 --repeats 2"
  fi
  # shellcheck disable=SC2086  # cost is a list of options
  "$py" benchmarks/training_cost.py $cost --out "$out/gpu_training_cost.json" | tee "$out/gpu_training_cost.txt"
  "$py" benchmarks/training_cost.py --table --out "$out/gpu_training_cost.json" > "$out/gpu_training_cost.md"
fi
