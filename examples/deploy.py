"""Every deployable artifact of a sparse model, measured: size, accuracy, speed.

    python examples/deploy.py --model runs/cifar10_dstee_0.9/model.keras --data ../shared/data/cifar10.npz
    python examples/deploy.py --smoke --data ../shared/data/cifar10.npz   # trains a small one first (CI)

From a `.keras` file written by a CIFAR example (or, with `--smoke`, a small
CNN trained here for a few steps with half its channels removed), writes a
SavedModel; TFLite files in float32 (sparse storage), dynamic-range int8 and
full-integer int8 (calibrated on 300 training images), each also slimmed
(removed channels cut out) when the model has removed channels; full int8
with one scale per weight tensor instead of one per channel (smaller); the dense
float32 TFLite file they are compared with; and ONNX when
`keras-dstee[onnx]` is installed. Then one row per artifact: file size and
gzip size, test accuracy of the file itself (TFLite files through the
default interpreter, ONNX through onnxruntime), batch-1 latency at 1 thread
(median of `--runs` alternated runs; the dense file timed twice, an A/A
control whose ratio should be near 1.00), and the layers on TFLite's sparse
kernels. Writes `deploy.md`, `deploy.json` and `deploy.png` (size against
latency) to `--out`. The images are standardised as the CIFAR examples do
(per-channel mean and std of the training images).
"""

import argparse
import gzip
import json
import os
import statistics
import time
import warnings

import keras
import numpy as np
from common import cifar_statistics
from common import load_npz
from common import require

import keras_dstee

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="a .keras file written by an example (not needed with --smoke)")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10.npz"),
                   help="the .npz the model was trained on (x_train, y_train, x_test, y_test)")
    p.add_argument("--out", default=os.path.join("runs", "deploy"), help="folder for the artifacts and the table")
    p.add_argument("--test-images", type=int, default=2000, help="test images to measure accuracy on")
    p.add_argument("--runs", type=int, default=50, help="timed runs per file (median)")
    p.add_argument("--smoke", action="store_true", help="train a small CNN for a few steps and measure it (CI)")
    return p.parse_args()


def small_cnn():
    """A CNN whose conv channels can be removed (for the slimmed rows)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(32, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10),
        ],
        name="deploy_smoke_cnn",
    )


def train_smoke(x, y):
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callback = keras_dstee.DSTEE(sparsity=0.9, channel_sparsity=0.5, update_freq=4, seed=0)
    model.fit(x, y, batch_size=32, epochs=3, verbose=2, callbacks=[callback])
    return keras_dstee.strip(model)


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def gzip_bytes(path):
    if os.path.isdir(path):
        return None
    with open(path, "rb") as f:
        return len(gzip.compress(f.read()))


def slimmed_or_none(model):
    """`keras_dstee.slim(model)`, or None when it removes nothing."""
    try:
        slimmed = keras_dstee.slim(model)
    except ValueError:  # no removable channel groups (e.g. a plain MLP)
        return None
    return slimmed if slimmed.count_params() < model.count_params() else None


def export_all(model, out, calibration):
    """Writes every artifact; returns rows `{name, path, kind, report}`."""
    rows = [{"name": "Keras model (.keras)", "path": os.path.join(out, "model.keras"), "kind": "keras"}]
    model.save(rows[0]["path"])
    rows.append({"name": "SavedModel", "path": keras_dstee.export_saved_model(model, os.path.join(out, "saved_model")),
                 "kind": "saved_model"})
    tflite = [
        ("TFLite float32, dense storage", "dense_float32", model, {"sparse": False}),
        ("TFLite float32, sparse", "float32", model, {"optimize_for": "latency"}),
        ("TFLite dynamic-range int8", "dynamic_int8", model, {"quantize": "int8", "optimize_for": "latency"}),
        ("TFLite full int8", "full_int8", model,
         {"quantize": "int8", "representative_data": calibration, "optimize_for": "latency"}),
    ]
    slimmed = slimmed_or_none(model)  # slimmed once, exported three ways
    if slimmed is not None:
        tflite += [(f"{name}, slimmed", f"{file}_slim", slimmed, options) for name, file, _, options in tflite[1:]]
    # Smaller still: one weight scale per tensor instead of per channel.
    tflite.append(("TFLite full int8, one scale per weight tensor", "full_int8_per_tensor", model,
                   {"quantize": "int8", "representative_data": calibration, "optimize_for": "latency",
                    "per_channel": False}))
    # What TFLite's own activation ranges (the extremes) give, beside the
    # ranges `export_tflite` chose.
    tflite.append(("TFLite full int8, TFLite's activation ranges", "full_int8_minmax", model,
                   {"quantize": "int8", "representative_data": calibration, "optimize_for": "latency",
                    "activation_ranges": "minmax"}))
    for name, file, source, options in tflite:
        path = os.path.join(out, f"{file}.tflite")
        print(f"Exporting {path} ...", flush=True)
        with warnings.catch_warnings():
            # "No layer runs on a sparse kernel": the table's last column says so.
            warnings.filterwarnings("ignore", message="No layer of this TFLite file")
            report = keras_dstee.export_tflite(source, path, **options)
        rows.append({"name": name, "path": path, "kind": "tflite", "report": report})
    try:
        report = keras_dstee.export_onnx(model, os.path.join(out, "model.onnx"))
        rows.append({"name": "ONNX", "path": report["path"], "kind": "onnx", "report": report})
    except ImportError as error:
        print(f"ONNX skipped: {error}")
    return rows


def accuracy(row, model, x, y):
    if row["kind"] == "keras":
        scores = keras.ops.convert_to_numpy(model.predict(x, batch_size=100, verbose=0))
    elif row["kind"] == "saved_model":
        tf = require("tensorflow")
        loaded = tf.saved_model.load(row["path"])  # holds the variables `serve` reads
        scores = np.concatenate([loaded.serve(tf.constant(x[i : i + 100])).numpy() for i in range(0, len(x), 100)])
    elif row["kind"] == "tflite":
        return keras_dstee.evaluate_tflite(row["path"], x, y, batch_size=50)
    else:
        session = onnx_session(row["path"])
        name = session.get_inputs()[0].name
        scores = np.concatenate([session.run(None, {name: x[i : i + 100]})[0] for i in range(0, len(x), 100)])
    return float(np.mean(scores.argmax(-1) == y))


def onnx_session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options)


def alternated_latency(runners, runs, warmup=10):
    """Median seconds per batch-1 call of each runner, called in turn so
    machine noise hits all alike."""
    for _ in range(warmup):
        for run in runners:
            run()
    times = [[] for _ in runners]
    for _ in range(runs):
        for run, row in zip(runners, times):
            start = time.perf_counter()
            run()
            row.append(time.perf_counter() - start)
    return [statistics.median(row) for row in times]


def tflite_call(path, sample):
    from keras_dstee.deploy.tflite_runner import open_interpreter

    interpreter = open_interpreter(path, num_threads=1)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    interpreter.set_tensor(detail["index"], sample)
    return interpreter.invoke


def onnx_call(path, sample):
    session = onnx_session(path)
    feed = {session.get_inputs()[0].name: sample}
    return lambda: session.run(None, feed)


def measure(rows, model, x, y, runs):
    for row in rows:
        row["bytes"] = folder_bytes(row["path"]) if os.path.isdir(row["path"]) else os.path.getsize(row["path"])
        row["gzip_bytes"] = gzip_bytes(row["path"])
        row["accuracy"] = accuracy(row, model, x, y)
        report = row.get("report", {})
        row["sparse_kernel_layers"] = report.get("accelerated")
        # Full int8: the activation ranges written, and how often the file
        # picked the model's class on the calibration samples.
        row.update({key: report[key] for key in ("activation_ranges", "calibration_agreement") if key in report})
        ranges = f", activation ranges {row['activation_ranges']}" if "activation_ranges" in row else ""
        print(f"{row['name']}: {row['bytes']:,} bytes, accuracy {row['accuracy']:.4f}{ranges}", flush=True)
    sample = x[:1]
    timed = [r for r in rows if r["kind"] in ("tflite", "onnx")]
    dense = next(r for r in timed if r["path"].endswith("dense_float32.tflite"))
    runners = [tflite_call(r["path"], sample) if r["kind"] == "tflite" else onnx_call(r["path"], sample) for r in timed]
    runners.append(tflite_call(dense["path"], sample))  # the A/A copy
    seconds = alternated_latency(runners, runs)
    for row, s in zip(timed, seconds):
        row["latency_ms"] = 1000 * s
        row["latency_ratio"] = s / seconds[timed.index(dense)]
    return seconds[-1] / seconds[timed.index(dense)]


def table(rows, control, runs, images):
    lines = [
        f"Test accuracy on {images} test images; latency: batch 1, 1 thread, median of {runs} alternated runs "
        f"(ratio to the dense float32 TFLite file; A/A control: the dense file against itself, {control:.2f}).",
        "",
        "| artifact | file | size KB | gzip KB | test accuracy % | latency ms | vs dense TFLite | layers on sparse kernels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gz = f"{r['gzip_bytes'] / 1024:,.1f}" if r["gzip_bytes"] is not None else "-"
        latency = f"{r['latency_ms']:.3f}" if "latency_ms" in r else "-"
        ratio = f"{r['latency_ratio']:.2f}x" if "latency_ratio" in r else "-"
        layers = "-" if r["sparse_kernel_layers"] is None else str(r["sparse_kernel_layers"])
        lines.append(
            f"| {r['name']} | {os.path.basename(r['path'])} | {r['bytes'] / 1024:,.1f} | {gz} | "
            f"{100 * r['accuracy']:.2f} | {latency} | {ratio} | {layers} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    plt = require("matplotlib.pyplot")
    timed = [r for r in rows if "latency_ms" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in timed:
        ax.scatter(r["bytes"] / 1024, r["latency_ms"])
        ax.annotate(r["name"], (r["bytes"] / 1024, r["latency_ms"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("file size (KB, log scale)")
    ax.set_ylabel("latency, batch 1, 1 thread (ms)")
    ax.set_title("Deployable artifacts: size against latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    args = parse_args()
    if not args.smoke and not args.model:
        raise SystemExit("give --model FILE.keras (written by an example), or --smoke")
    if args.model and not os.path.isfile(args.model):
        raise SystemExit(f"--model: no such file: {args.model}")
    (x_train, y_train), (x_test, y_test) = load_npz(args.data)
    mean, std = cifar_statistics(x_train)

    def standardise(images):
        return ((images / 255.0 - mean) / std).astype("float32")

    if args.smoke:
        args.test_images, args.runs = min(args.test_images, 200), min(args.runs, 5)
        model = train_smoke(standardise(x_train[:1024]), y_train[:1024])
    else:
        model = keras.saving.load_model(args.model, compile=False)
    if tuple(model.inputs[0].shape[1:]) != x_test.shape[1:]:
        raise SystemExit(f"the model takes {tuple(model.inputs[0].shape[1:])} inputs; --data has images of {x_test.shape[1:]}")
    os.makedirs(args.out, exist_ok=True)
    x, y = standardise(x_test[: args.test_images]), y_test[: args.test_images]
    rows = export_all(model, args.out, standardise(x_train[:300]))
    control = measure(rows, model, x, y, args.runs)
    text = table(rows, control, args.runs, len(x))
    print("\n" + text)
    with open(os.path.join(args.out, "deploy.md"), "w") as f:
        f.write(text + "\n")
    results = {"backend": keras.backend.backend(), "aa_control": control, "test_images": len(x), "runs": args.runs,
               "artifacts": [{k: v for k, v in r.items() if k != "report"} for r in rows]}
    with open(os.path.join(args.out, "deploy.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(rows, os.path.join(args.out, "deploy.png"))


if __name__ == "__main__":
    main()
