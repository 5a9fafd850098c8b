"""Training that shrinks on the models users bring: each `keras.applications`
architecture below (32x32 inputs, random weights and data, 6 short epochs)
is trained with `DSTEE(sparsity=0.9, channel_sparsity=0.5, min_channels=0.2,
channel_end=0.25, shrink=True)` (channels ranked across layers: every layer
its own width, the harder case for the rebuild); the script records the
rebuilds, the parameters and multiply-adds before and after, the losses,
and whether the shrunk model saved as `.keras` loads and predicts what it
predicted. A check that the
rebuild handles real architectures (residual adds, concatenation,
depthwise and squeeze-and-excitation blocks, LayerNormalization), not a
speed or accuracy figure.

    KERAS_BACKEND=tensorflow python benchmarks/shrink_applications.py
    KERAS_BACKEND=jax python benchmarks/shrink_applications.py --models MobileNetV2

Writes (merges into) `benchmarks/results/shrink_applications.json` and
prints the markdown table of every run (`--table` only prints it).
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dstee  # noqa: E402
from benchmarks import common  # noqa: E402

OUT = os.path.join(common.RESULTS, "shrink_applications.json")
MODELS = {
    "ResNet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35),
    "VGG16": lambda: keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10),
    "DenseNet121": lambda: keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10),
    "ConvNeXtTiny": lambda: keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10),
}


def run(name):
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 32)
    params_before = model.count_params()
    # Channels ranked across layers: every layer its own width, the harder case for the rebuild.
    callback = keras_dstee.DSTEE(sparsity=0.9, channel_sparsity=0.5, min_channels=0.2, channel_end=0.25, shrink=True,
                                 update_freq=2)
    start = time.perf_counter()
    history = model.fit(x, y, epochs=6, batch_size=8, verbose=0, callbacks=[callback])
    seconds = time.perf_counter() - start
    predicted = model.predict(x[:8], verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "shrunk.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        reloaded = float(np.abs(loaded.predict(x[:8], verbose=0) - predicted).max())
    rebuilds = callback.rebuilds
    return {
        "backend": keras.backend.backend(),
        "model": name,
        "rebuilds": len(rebuilds),
        "params_before": params_before,
        "params_after": model.count_params(),
        "flops_ratio": rebuilds[-1]["flops_after"] / rebuilds[0]["flops_before"] if rebuilds else 1.0,
        "losses": [float(v) for v in history.history["loss"]],
        "finite": bool(np.isfinite(predicted).all()),
        "reload_difference": reloaded,
        "seconds": seconds,
    }


def table(runs):
    lines = [
        "# Training that shrinks on keras.applications architectures",
        "",
        "    KERAS_BACKEND=tensorflow python benchmarks/shrink_applications.py",
        "",
        "32x32 inputs, random weights and data (32 images, batch 8, 6 epochs), "
        "`DSTEE(sparsity=0.9, channel_sparsity=0.5, min_channels=0.2, channel_end=0.25, shrink=True, update_freq=2)`. "
        "A check that the rebuild handles these architectures, not a speed or accuracy figure: "
        "the losses are on random labels. \"multiply-adds after\": "
        "multiply-adds per example through every prunable kernel, after the last rebuild against before the first.",
        "",
        "| backend | model | rebuilds | parameters before -> after | multiply-adds after | loss, first -> last epoch "
        "| outputs finite | `.keras` reload, largest difference | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs.values(), key=lambda r: (r["model"], r["backend"])):
        lines.append(
            f"| {r['backend']} | {r['model']} | {r['rebuilds']} | {r['params_before']:,} -> {r['params_after']:,} "
            f"| {r['flops_ratio']:.2f}x | {r['losses'][0]:.2f} -> {r['losses'][-1]:.2f} | {r['finite']} "
            f"| {r['reload_difference']:.1e} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--table", action="store_true", help="print the table of the recorded runs and stop")
    args = parser.parse_args()
    runs = json.load(open(OUT)) if os.path.isfile(OUT) else {}
    if not args.table:
        for name in args.models:
            result = run(name)
            runs[f"{result['backend']}/{name}"] = result
            with open(OUT, "w") as f:
                json.dump(runs, f, indent=1)
            print(name, result, flush=True)
    common.write_table(OUT.replace(".json", ".md"), table(runs))


if __name__ == "__main__":
    main()
