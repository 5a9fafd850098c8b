"""Latency of VGG-19 and ResNet-50 (CIFAR, full width) after channel-level
sparsity and `slim`, against dense and unstructured sparsity.

    KERAS_BACKEND=jax python benchmarks/channel_latency.py --phase structure
    python benchmarks/channel_latency.py --phase tflite        # on a quiet machine
    KERAS_BACKEND=jax python benchmarks/channel_latency.py --phase predict   # per backend
    python benchmarks/channel_latency.py --phase table

How the sparse structure is made: latency depends on the structure only, so
each variant is one short run of the real schedule to its end: 16 steps of
batch 32 on CIFAR-10 training images, SGD (lr 0.05, momentum 0.9), masks and
channels updated every 2 steps until the last (`update_freq=2, end=1.0`),
DST-EE at sparsity 0.9 or 0.98, with `channel_sparsity` 0, 0.3 or 0.5 (seed 0),
ranked globally with the default floor (`min_channels=0.2`) or "uniform"
(`min_channels=1`: every layer keeps `1 - channel_sparsity` of its channels).
Which channels go after real training differs; how many go does not (the
global count is the schedule's), though with the global ranking how many each
layer loses may.

Variants: dense; unstructured 0.9 and 0.98 (TFLite's sparse format: conv
weights are made dense at load, so no speed-up is expected); channels 0.3 and
0.5 at 0.9 and 0.98, and both uniform at 0.9, slimmed (`export_tflite(..., slim=True)` and
`keras_dstee.slim`).

Latency: float32 TFLite at batch 1, 1 and 2 threads (ai-edge-litert), the
dense file, a second copy of it (A/A control) and the variant alternated in
one process, median of `--runs`; Keras `predict_on_batch` (compiled) at batch
1 and 64 on the running backend, the same way (the A/A copy is the dense model
loaded twice). Results go to `benchmarks/results/channel_latency/`.
"""

import argparse
import json
import os
import statistics
import time

import keras
import numpy as np
from common import RESULTS
from common import load_cifar10
from common import machine
from common import write_table
from inference_latency import alternated_latency

import keras_dstee
from keras_dstee import models

FOLDER = os.path.join(RESULTS, "channel_latency")
MODELS = {"vgg19_cifar": lambda: models.vgg19_cifar(num_classes=10), "resnet50_cifar": models.resnet50_cifar}
# (name, sparsity, channel_sparsity, min_channels): "uniform" is
# min_channels=1, every layer keeping 1 - channel_sparsity of its channels.
VARIANTS = [
    ("dense", 0.0, 0.0, 0.2),
    ("unstructured @ 0.9", 0.9, 0.0, 0.2),
    ("unstructured @ 0.98", 0.98, 0.0, 0.2),
    ("channels 0.3 @ 0.9", 0.9, 0.3, 0.2),
    ("channels 0.5 @ 0.9", 0.9, 0.5, 0.2),
    ("channels 0.3 @ 0.98", 0.98, 0.3, 0.2),
    ("channels 0.5 @ 0.98", 0.98, 0.5, 0.2),
    ("channels 0.3 uniform @ 0.9", 0.9, 0.3, 1.0),
    ("channels 0.5 uniform @ 0.9", 0.9, 0.5, 1.0),
]


def file_name(model_name, variant):
    return variant.replace(" @ ", "_at_").replace(" ", "_") + f"_{model_name}"


def make_structure(model_name, variant, sparsity, channels, min_channels, data):
    """Builds the model, runs the schedule (sparse variants), writes its
    TFLite file (and the Keras model Keras's predict runs)."""
    keras.utils.set_random_seed(0)
    model = MODELS[model_name]()
    name = file_name(model_name, variant)
    path = os.path.join(FOLDER, name)
    entry = {"params": model.count_params()}
    if sparsity == 0:
        model.save(path + ".keras")
        entry["tflite_bytes"] = keras_dstee.export_tflite(model, path + ".tflite", sparse=False)["bytes"]
        keras_dstee.export_tflite(model, path + "_copy.tflite", sparse=False)
        entry["flops"] = keras_dstee.summary(model, print_fn=lambda line: None)["total"]["flops_dense"]
        return entry
    (x, y), _ = data
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    callback = keras_dstee.DSTEE(
        sparsity=sparsity, channel_sparsity=channels, min_channels=min_channels, update_freq=2, end=1.0, seed=0
    )
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    keras_dstee.strip(model)
    entry["live_channels"] = history.history["live_channels"][-1]
    entry["sparsity"] = history.history["sparsity"][-1]
    if channels == 0:
        model.save(path + ".keras")
        report = keras_dstee.export_tflite(model, path + ".tflite")
        entry["flops"] = keras_dstee.summary(model, print_fn=lambda line: None)["total"]["flops_sparse"]
    else:
        slimmed = keras_dstee.slim(model)
        slimmed.save(path + ".keras")
        entry["slim_params"] = slimmed.count_params()
        report = keras_dstee.export_tflite(model, path + ".tflite", slim=True)
        # Multiply-adds of the slimmed network run dense (its zeros not counted).
        entry["slim_flops"] = keras_dstee.summary(slimmed, print_fn=lambda line: None)["total"]["flops_dense"]
        entry["flops"] = keras_dstee.summary(model, print_fn=lambda line: None)["total"]["flops_sparse"]
    entry["tflite_bytes"] = report["bytes"]
    return entry


def predict_latency(paths, batch, runs, warmup=3):
    """Median seconds of `predict_on_batch` of each `.keras` model, the
    models alternated."""
    loaded = [keras.saving.load_model(p, compile=False) for p in paths]
    x = np.random.default_rng(0).normal(size=(batch, 32, 32, 3)).astype("float32")
    for _ in range(warmup):
        for model in loaded:
            model.predict_on_batch(x)
    times = [[] for _ in paths]
    for _ in range(runs):
        for model, row in zip(loaded, times):
            start = time.perf_counter()
            model.predict_on_batch(x)
            row.append(time.perf_counter() - start)
    return [statistics.median(row) for row in times]


def ratios(dense, control, variant):
    """Seconds of dense, its A/A copy and the variant, and both ratios."""
    return {"dense": dense, "variant": variant, "ratio": variant / dense, "aa": control / dense}


def table(results):
    lines = [
        "| model | variant | live channels | params (slimmed) | FLOPs ratio (slimmed) | TFLite KB | "
        "TFLite 1 thread: ms, ratio (A/A) | TFLite 2 threads | "
        + " | ".join(f"{b} predict b1 / b64: ratio (A/A)" for b in results.get("predict", {}))
        + " |",
    ]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for model_name in MODELS:
        dense = results["structure"].get(f"{model_name}/dense")
        for variant, *_ in VARIANTS:
            key = f"{model_name}/{variant}"
            entry = results["structure"].get(key)
            if entry is None or dense is None:
                continue
            live = "-" if "live_channels" not in entry else f"{entry['live_channels']:.2f}"
            params = f"{entry.get('slim_params', entry['params']) / 1e6:.2f}M"
            flops = entry.get("slim_flops", dense["flops"]) / dense["flops"]
            cells = []
            for threads in ("1", "2"):
                lat = results.get("tflite", {}).get(key, {}).get(threads)
                cells.append(
                    "-" if lat is None else f"{1e3 * lat['variant']:.1f}, **{lat['ratio']:.2f}x** ({lat['aa']:.2f})"
                )
            for timings in results.get("predict", {}).values():
                row = timings.get(key)
                cells.append(
                    "-"
                    if row is None
                    else " / ".join(f"**{row[b]['ratio']:.2f}x** ({row[b]['aa']:.2f})" for b in ("1", "64"))
                )
            lines.append(
                f"| {model_name} | {variant} | {live} | {params} | {flops:.2f} | "
                f"{entry.get('tflite_bytes', 0) / 1024:,.0f} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--phase", choices=("structure", "tflite", "predict", "table"), required=True)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--variants", nargs="+", help="only these variants (names as in VARIANTS); default: all")
    p.add_argument("--runs", type=int, default=40, help="timed invocations per TFLite interpreter")
    p.add_argument("--predict-runs", type=int, default=10, help="timed predict calls per model and batch")
    args = p.parse_args()
    chosen = [v for v in VARIANTS if args.variants is None or v[0] in args.variants or v[0] == "dense"]
    os.makedirs(FOLDER, exist_ok=True)
    results_path = os.path.join(FOLDER, "results.json")
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {}
    for part in ("structure", "tflite", "predict"):
        results.setdefault(part, {})

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)

    if args.phase == "structure":
        data = load_cifar10(train_size=512)
        for model_name in args.models:
            for variant, *settings in chosen:
                key = f"{model_name}/{variant}"
                # The files are not kept in git: a fresh checkout remakes them.
                made = os.path.isfile(os.path.join(FOLDER, file_name(model_name, variant) + ".keras"))
                if key not in results["structure"] or not made:
                    results["structure"][key] = make_structure(model_name, variant, *settings, data)
                    save()
                    print(key, results["structure"][key], flush=True)
    elif args.phase == "tflite":
        results["runs"] = args.runs
        for model_name in args.models:
            dense = os.path.join(FOLDER, file_name(model_name, "dense"))
            for variant, *_ in chosen[1:]:
                key = f"{model_name}/{variant}"
                if key in results["tflite"] or key not in results["structure"]:
                    continue
                entry = {}
                for threads in (1, 2):
                    paths = [dense + ".tflite", dense + "_copy.tflite"]
                    paths.append(os.path.join(FOLDER, file_name(model_name, variant) + ".tflite"))
                    entry[str(threads)] = ratios(*alternated_latency(paths, threads, args.runs, warmup=5))
                results["tflite"][key] = entry
                save()
                print(key, json.dumps(entry), flush=True)
    elif args.phase == "predict":
        backend = keras.backend.backend()
        results.setdefault("predict_runs", {})[backend] = args.predict_runs
        timings = results["predict"].setdefault(backend, {})
        for model_name in args.models:
            dense = os.path.join(FOLDER, file_name(model_name, "dense") + ".keras")
            # Unstructured zeros run as dense in Keras: only the slimmed variants.
            for variant, _, channels, _ in chosen[1:]:
                key = f"{model_name}/{variant}"
                if channels == 0 or key in timings or key not in results["structure"]:
                    continue
                entry = {}
                for batch in (1, 64):
                    paths = [dense, dense, os.path.join(FOLDER, file_name(model_name, variant) + ".keras")]
                    entry[str(batch)] = ratios(*predict_latency(paths, batch, args.predict_runs))
                timings[key] = entry
                save()
                print(backend, key, json.dumps(entry), flush=True)
    predict_runs = ", ".join(f"{n} ({backend})" for backend, n in results.get("predict_runs", {}).items())
    text = (
        f"{machine()}; TFLite: median of "
        f"{results.get('runs', args.runs)} alternated runs at batch 1, float32; predict: median of "
        f"{predict_runs or '-'}\n\n"
        + table(results)
    )
    write_table(os.path.join(FOLDER, "table.md"), text)


if __name__ == "__main__":
    main()
