"""Where the extra time of a sparse train step goes, on the torch backend.

    KERAS_BACKEND=torch python benchmarks/profile_step.py
    KERAS_BACKEND=torch python benchmarks/profile_step.py --update-freq 4

PyTorch runs the train step eagerly, so each piece of `SparseOptimizer`'s
work can be timed from Python (on TensorFlow and JAX the step is compiled and
the Python code only runs while tracing). Same models and protocol as
`overhead.py` (small CNN, 90% ERK, dense and sparse steps alternating); the
sparse optimizer's methods are wrapped with timers. Prints milliseconds per
step for: the whole step of each model, the whole optimizer `apply`, the inner
optimizer (dense model: its own `apply`), the mask constraint, the update
check plus drop-and-grow, and drop-and-grow alone. Writes
`benchmarks/results/profile_step_<backend>.json`.
"""

import argparse
import collections
import json
import os
import statistics
import time

import keras
from common import RESULTS
from overhead import batches
from overhead import build

TIMES = collections.defaultdict(float)


def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start

    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-freq", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    data = batches(args.batch_size)
    dense = build("small_cnn", False, args.update_freq, args.steps * args.repeats)
    sparse = build("small_cnn", True, args.update_freq, args.steps * args.repeats)
    for x, y in data[:10]:
        dense.train_on_batch(x, y)
        sparse.train_on_batch(x, y)

    optimizer = sparse.optimizer
    optimizer.apply = timed("sparse: optimizer apply", optimizer.apply)
    optimizer.inner_optimizer.apply = timed("sparse: inner optimizer + constraint", optimizer.inner_optimizer.apply)
    optimizer._update_masks = timed("sparse: update check + drop-and-grow", optimizer._update_masks)
    optimizer._drop_and_grow = timed("sparse: drop-and-grow", optimizer._drop_and_grow)
    for kernel in optimizer.kernels:
        constraint = kernel.variable.constraint
        kernel.variable.constraint = timed("sparse: mask constraint", constraint)
    dense.optimizer.apply = timed("dense: optimizer apply", dense.optimizer.apply)

    repeats = []
    for _ in range(args.repeats):
        TIMES.clear()
        for step in range(args.steps):
            x, y = data[step % len(data)]
            for name in ("dense", "sparse") if step % 2 == 0 else ("sparse", "dense"):
                start = time.perf_counter()
                (dense if name == "dense" else sparse).train_on_batch(x, y)
                TIMES[f"{name}: step"] += time.perf_counter() - start
        repeats.append({name: 1000 * total / args.steps for name, total in TIMES.items()})
    per_step = {name: statistics.median(r[name] for r in repeats) for name in repeats[0]}
    report = {
        "command": f"KERAS_BACKEND={keras.backend.backend()} python benchmarks/profile_step.py "
        f"--update-freq {args.update_freq} --steps {args.steps} --repeats {args.repeats}",
        "backend": keras.backend.backend(),
        "update_freq": args.update_freq,
        "batch_size": args.batch_size,
        "ms_per_step_median": per_step,
        "repeats": repeats,
    }
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"profile_step_{keras.backend.backend()}_freq{args.update_freq}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    for name in sorted(per_step):
        print(f"{name:45s} {per_step[name]:8.3f} ms/step")
    print(f"step ratio sparse/dense: {per_step['sparse: step'] / per_step['dense: step']:.3f}")


if __name__ == "__main__":
    main()
