"""Is every exported TFLite file at least as fast as dense? The two export
rules of issue 20, measured on their structure:

    KERAS_BACKEND=tensorflow python benchmarks/export_rules.py

1. `optimize_for="latency"` stores a Dense weight dense where it multiplies
   several rows per sample. Models: the MLP-Mixer and the MLP of
   `inference_latency.py`, block-sparse (4, 1) at 0.9. Files: dense; every
   weight in the sparse format (`optimize_for="size"`, what "latency" wrote
   before the rule); `optimize_for="latency"`.
2. Full-integer int8 of the MLP with (16, 1) blocks, TFLite's int8 sparse
   pattern, at 0.9 and 0.98, against the dense full-int8 file.

Latency depends on the structure only, so each sparse model gets its masks
from a short run of the real schedule to its end (DST-EE, 24 steps on random
inputs, update every 4) instead of a CIFAR training run. Each file is timed
at batch 1 with 1 and 2 threads, alternated with the dense file and a copy
of it (the A/A control), `--runs` invocations after a warm-up, medians.
Writes `benchmarks/results/export_rules.json` and `.md`.
"""

import argparse
import json
import os
import tempfile

import keras
import numpy as np
from common import RESULTS
from common import machine
from common import write_table
from inference_latency import MODELS
from inference_latency import alternated_latency

import keras_dstee


def structured(model_name, sparsity, block):
    """The model with masks from a short DST-EE run to the schedule's end."""
    keras.utils.set_random_seed(0)
    model = MODELS[model_name]()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(768, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=768)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = keras_dstee.DSTEE(
        sparsity=sparsity, block_size=block, update_freq=4, seed=0, dense_first=model_name == "mixer"
    )
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    return keras_dstee.strip(model), x[:300]


def timed(paths, runs):
    """{threads: [median seconds per path]}, the paths alternated."""
    return {str(t): alternated_latency(paths, t, runs) for t in (1, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200, help="timed invocations per file")
    args = p.parse_args()
    folder = tempfile.mkdtemp()
    rows = []

    def measure(name, files):
        """files: [(label, path)]; the first is the dense baseline."""
        dense = files[0][1]
        copy = os.path.join(folder, "aa_copy.tflite")
        with open(dense, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
        times = timed([dense, copy] + [path for _, path in files[1:]], args.runs)
        for i, (label, path) in enumerate(files[1:]):
            row = {"model": name, "file": label, "kb": os.path.getsize(path) / 1024}
            for t, seconds in times.items():
                row[f"ms_{t}"] = 1e3 * seconds[2 + i]
                row[f"ratio_{t}"] = seconds[2 + i] / seconds[0]
                row[f"aa_{t}"] = seconds[1] / seconds[0]
            rows.append(row)
            print(json.dumps(row), flush=True)

    for model_name in ("mixer", "mlp"):
        model, _ = structured(model_name, 0.9, (4, 1))
        files = [("dense", os.path.join(folder, f"{model_name}_dense.tflite"))]
        keras_dstee.export_tflite(model, files[0][1], sparse=False)
        for label, mode in (("every weight sparse (optimize_for='size')", "size"), ("optimize_for='latency'", "latency")):
            path = os.path.join(folder, f"{model_name}_{mode}.tflite")
            report = keras_dstee.export_tflite(model, path, optimize_for=mode)
            layers = report.get("layers")
            if layers:
                label += f", {report['accelerated']}/{len(layers)} on the sparse kernel"
            files.append((label, path))
        measure(f"{model_name}, (4, 1) blocks @ 0.9, float32", files)

    for sparsity in (0.9, 0.98):
        model, calibration = structured("mlp", sparsity, (16, 1))
        files = []
        for label, sparse in (("full int8, dense", False), ("full int8, sparse", True)):
            path = os.path.join(folder, f"int8_{sparsity}_{sparse}.tflite")
            report = keras_dstee.export_tflite(
                model, path, sparse=sparse, quantize="int8", representative_data=calibration,
                optimize_for="latency" if sparse else "size",
            )
            if sparse:
                label += f", {report['accelerated']}/{len(report['layers'])} on the int8 sparse kernel"
            files.append((label, path))
        measure(f"mlp, (16, 1) blocks @ {sparsity}, full int8", files)

    lines = [
        f"{machine()}; batch 1, median of {args.runs} "
        "alternated runs; ratio to the dense file of the same precision (A/A: dense against its copy)",
        "",
        "| model | file | KB | 1 thread: ms, ratio (A/A) | 2 threads: ms, ratio (A/A) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[f'ms_{t}']:.3f}, **{r[f'ratio_{t}']:.2f}x** ({r[f'aa_{t}']:.2f})" for t in ("1", "2")]
        lines.append(f"| {r['model']} | {r['file']} | {r['kb']:,.0f} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines)
    with open(os.path.join(RESULTS, "export_rules.json"), "w") as f:
        json.dump(rows, f, indent=1)
    write_table(os.path.join(RESULTS, "export_rules.md"), text)


if __name__ == "__main__":
    main()
