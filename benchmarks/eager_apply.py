"""Eager `SparseOptimizer.apply` (a custom loop outside any compiled step)
against the plain optimizer's eager `apply` on the same model.

    KERAS_BACKEND=jax python benchmarks/eager_apply.py [--steps 40 --repeats 5]

Both optimizers apply the same gradients to copies of one small CNN, one
step each in turn; the ratio is of median step times, with an A/A control
(the plain optimizer against a second plain one) printed beside it. The sparse
optimizer updates its masks every `--update-freq` steps; those steps are
reported apart.
"""

import argparse
import json
import time

import keras
import numpy as np

import keras_dstee


def cnn(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def sync(model):
    keras.ops.convert_to_numpy(model.trainable_variables[0])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--update-freq", type=int, default=10)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args()

    models = {name: cnn(0) for name in ("plain", "copy", "sparse")}
    optimizers = {"plain": keras.optimizers.Adam(1e-3), "copy": keras.optimizers.Adam(1e-3)}
    densities = keras_dstee.layer_densities(models["sparse"], 0.9)
    optimizers["sparse"] = keras_dstee.SparseOptimizer(
        keras.optimizers.Adam(1e-3), densities, update_freq=args.update_freq,
        end_step=10**9, seed=0,
    )
    for name, optimizer in optimizers.items():
        optimizer.build(models[name].trainable_variables)
    optimizers["sparse"].install()
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") * 1e-3 for v in models["plain"].trainable_variables]
    grads = [keras.ops.convert_to_tensor(g) for g in grads]
    times = {"plain": [], "copy": [], "sparse": [], "sparse_update": []}
    step = 0
    for repeat in range(args.repeats + 1):
        for _ in range(args.steps):
            step += 1
            for name in ("plain", "copy", "sparse"):
                start = time.perf_counter()
                optimizers[name].apply(grads, models[name].trainable_variables)
                sync(models[name])
                elapsed = time.perf_counter() - start
                if repeat == 0:
                    continue  # warm-up
                key = "sparse_update" if name == "sparse" and step % args.update_freq == 0 else name
                times[key].append(elapsed)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "backend": keras.backend.backend(),
        "median_ms": {k: round(v * 1e3, 3) for k, v in medians.items()},
        "ratio_sparse_over_plain": round(medians["sparse"] / medians["plain"], 3),
        "ratio_update_step_over_plain": round(medians["sparse_update"] / medians["plain"], 3),
        "aa_control_copy_over_plain": round(medians["copy"] / medians["plain"], 3),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
