"""Train-step time of sparse training (DST-EE) against the same dense model.

    KERAS_BACKEND=jax python benchmarks/overhead.py                  # small CNN
    KERAS_BACKEND=jax python benchmarks/overhead.py --model resnet50_cifar --steps 60
    # one drop-and-grow (update step minus plain step; the batch size barely matters):
    python benchmarks/overhead.py --model cnn_5m --update-freqs 2 --batch-size 8 --steps 20 --repeats 1
    python benchmarks/overhead.py --quick                            # a few seconds

Protocol (separate processes drift 20-50% on a shared machine): both models
live in one process and one step of each alternates, through the compiled
train function `fit` uses (`train_on_batch`), mask-update steps included;
which model steps first alternates. The sparse model is compiled with `SparseOptimizer` (DST-EE, 90% sparsity, ERK).
Reported: the ratio of mean step times (median over `--repeats` blocks,
after warm-up steps), the extra time of a mask-update step over a plain one
(one drop-and-grow), and peak RSS. Writes
`benchmarks/results/overhead_<backend>_<model>.json`.
"""

import argparse
import json
import os
import resource
import statistics
import time

import keras
import numpy as np
from common import CIFAR10
from common import RESULTS
from common import load_cifar10

import keras_dstee


def vgg_cnn(widths):
    """Two 3x3 convs per width, max-pooling between: the small CNN at (32, 64,
    128) with 0.29M parameters; (64, 128, 256) has 1.1M, (128, 256, 512) 4.6M."""
    return keras.Sequential(
        [keras.Input((32, 32, 3))]
        + [layer for w in widths for layer in (
            keras.layers.Conv2D(w, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(w, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D())]
        + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    )


MODELS = {
    "small_cnn": lambda: vgg_cnn((32, 64, 128)),
    "cnn_1m": lambda: vgg_cnn((64, 128, 256)),
    "cnn_5m": lambda: vgg_cnn((128, 256, 512)),
    "resnet50_cifar": lambda: keras_dstee.models.resnet50_cifar(10),
    "vgg19_cifar": lambda: keras_dstee.models.vgg19_cifar(10),
}


def build(name, sparse, update_freq, steps):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if sparse:
        optimizer = keras_dstee.SparseOptimizer(
            optimizer,
            keras_dstee.layer_densities(model, 0.9),
            update_freq=update_freq,
            end_step=10 * steps,  # updates throughout the measured steps
            seed=0,
        )
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def batches(batch_size, count=64):
    """Real CIFAR-10 batches, cycled: a model fitting one fixed batch over and
    over drifts its own step time (the dense one by several percent here)."""
    if os.path.isfile(CIFAR10):
        (x, y), _ = load_cifar10(train_size=batch_size * count)
    else:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch_size * count, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, size=batch_size * count)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def measure(name, update_freq, steps, warmup, repeats, batch_size):
    data = batches(batch_size)
    dense = build(name, False, update_freq, steps * repeats)
    sparse = build(name, True, update_freq, steps * repeats)
    for x, y in data[:warmup]:
        dense.train_on_batch(x, y)
        sparse.train_on_batch(x, y)
    optimizer = sparse.optimizer
    ratios, median_ratios, update_extra = [], [], []
    for _ in range(repeats):
        times = {"dense": [], "sparse": [], "sparse_update": []}
        for step in range(steps):
            x, y = data[step % len(data)]
            # The step about to run updates masks if its number is a multiple.
            due = (int(keras.ops.convert_to_numpy(optimizer.step)) + 1) % update_freq == 0
            # Which model goes first alternates, so neither pays for the
            # other's leftovers (allocator, caches) more often.
            for which in ("dense", "sparse") if step % 2 == 0 else ("sparse", "dense"):
                model = dense if which == "dense" else sparse
                start = time.perf_counter()
                model.train_on_batch(x, y)
                elapsed = time.perf_counter() - start
                times["sparse_update" if which == "sparse" and due else which].append(elapsed)
        all_sparse = times["sparse"] + times["sparse_update"]
        ratios.append(statistics.mean(all_sparse) / statistics.mean(times["dense"]))
        # Less sensitive to the machine's pauses; mask-update steps excluded.
        median_ratios.append(statistics.median(times["sparse"]) / statistics.median(times["dense"]))
        if times["sparse_update"]:
            update_extra.append(statistics.median(times["sparse_update"]) - statistics.median(times["sparse"]))
    return {
        "model": name,
        "params": dense.count_params(),
        "update_freq": update_freq,
        "batch_size": batch_size,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "plain_step_median_ratios": median_ratios,
        "dense_step_ms": 1000 * statistics.median(times["dense"]),
        "drop_and_grow_seconds": statistics.median(update_extra) if update_extra else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    parser.add_argument("--update-freqs", type=int, nargs="+", default=[100, 4])
    parser.add_argument("--steps", type=int, default=1000, help="alternating steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="40 steps, 1 repeat")
    parser.add_argument("--out", help="result file (default: results/overhead_<backend>_<model>.json)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warmup = 40, 1, 3
    backend = keras.backend.backend()
    results = {"backend": backend, "runs": []}
    for update_freq in args.update_freqs:
        run = measure(args.model, update_freq, args.steps, args.warmup, args.repeats, args.batch_size)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    suffix = "_quick" if args.quick else ""
    out = args.out or os.path.join(RESULTS, f"overhead_{backend}_{args.model}{suffix}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    for run in results["runs"]:
        extra = run["drop_and_grow_seconds"]
        print(f"{backend} {run['model']} update_freq={run['update_freq']}: "
              f"{run['ratio_median']:.3f}x dense; one drop-and-grow "
              f"{'n/a' if extra is None else f'{1000 * extra:.1f} ms'}; peak RSS {run['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
