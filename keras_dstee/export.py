"""Export SavedModel and sparse TFLite files.

The kernels are physically zero, so a sparse model is a plain Keras model
(`keras_dstee.strip` removes the training wrapper). TFLite
conversion needs TensorFlow's graph: on the TensorFlow backend it runs in
process; from JAX or PyTorch the model goes through its backend-neutral
`.keras` file into a TensorFlow-backend subprocess.
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile
import warnings

import keras

from keras_dstee import slimming
from keras_dstee import tflite_inspection

QUANTIZE = (None, "int8")
OPTIMIZE_FOR = ("size", "latency")


def _check_output_path(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"The folder of the output path does not exist: {folder}")


def export_saved_model(model, path, slim=False):
    """Exports `model`'s inference function as a TensorFlow SavedModel.

    Works from every backend: TensorFlow and JAX export directly (JAX through
    jax2tf); PyTorch rebuilds the model from its `.keras` file under the
    TensorFlow backend in a subprocess. The model itself is not modified.

    Args:
        model: a Keras model.
        path: the folder to write.
        slim: export `keras_dstee.slim(model)`: without the channels that
            change no output.

    Returns:
        `path`.
    """
    _check_output_path(path)
    if slim:
        model = slimming.slim(model)
    if keras.backend.backend() in ("tensorflow", "jax"):
        model.export(path, format="tf_saved_model", verbose=False)
        return path
    _run_in_tensorflow(model, ["--saved-model", path])
    return path


def export_tflite(model, path, sparse=True, quantize=None, optimize_for="size", slim=False):
    """Exports `model` to a TFLite file, storing sparse kernels compactly.

    A sparse file is always smaller. It is faster only where TFLite has a
    sparse kernel: `Dense` layers trained with `block_size=(4, 1)` run on
    TFLite's sparse FullyConnected kernel; other sparse weights (conv,
    unstructured Dense) are made dense when the interpreter loads them.
    `optimize_for="latency"` reports, per prunable kernel, which happens.

    Args:
        model: a Keras model (trained sparse or not), on any backend.
        path: the `.tflite` file to write.
        sparse: store kernels with TFLite's sparse format
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`).
        quantize: `None` (float32) or `"int8"` (int8 weights, dynamic-range
            quantization; no calibration data needed).
        optimize_for: `"size"`, or `"latency"`: the same sparse conversion,
            then the converted graph is inspected and the report gets
            `layers` (per prunable kernel: its TFLite `op` and `storage`,
            `"sparse kernel"`, `"densified at load"` or `"dense"`, with a
            `reason`) and `accelerated` (how many run on a sparse kernel); a
            warning says why when none does.
        slim: export `keras_dstee.slim(model)`: without the channels that
            change no output (a smaller, faster dense network that keeps its
            zeros).

    Returns:
        A dict: `path`; `bytes` and `gzip_bytes` of the file; `dense_bytes`
        and `dense_gzip_bytes` of the same export without the sparse format;
        `op_resolver`: `"default"`, or, for sparse int8 files,
        `"BUILTIN_WITHOUT_DEFAULT_DELEGATES"` -- their sparse int8 kernels
        fail in the default XNNPack delegate, so build the interpreter with
        `experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"`quantize` must be one of {QUANTIZE}. Received: quantize={quantize!r}")
    if optimize_for not in OPTIMIZE_FOR:
        raise ValueError(f"`optimize_for` must be one of {OPTIMIZE_FOR}. Received: optimize_for={optimize_for!r}")
    if optimize_for == "latency" and not sparse:
        raise ValueError("`optimize_for='latency'` needs the sparse format: leave `sparse=True`.")
    _check_output_path(path)
    if slim:
        model = slimming.slim(model)
    if keras.backend.backend() != "tensorflow":
        flags = ["--tflite", path] + (["--dense"] if not sparse else [])
        flags += ["--int8"] if quantize == "int8" else []
        flags += ["--optimize-for", optimize_for]
        report = _run_in_tensorflow(model, flags)
    else:
        report = _export_tflite_here(model, path, sparse, quantize, optimize_for)
    if optimize_for == "latency" and report["accelerated"] == 0:
        reasons = sorted({f"{row['storage']}: {row['reason']}" for row in report["layers"]})
        warnings.warn(
            "No layer of this TFLite file runs on a sparse kernel, so it is "
            "smaller but not faster than dense. " + "; ".join(reasons),
            stacklevel=2,
        )
    return report


def _export_tflite_here(model, path, sparse, quantize, optimize_for):
    """`export_tflite` on the TensorFlow backend."""
    with tempfile.TemporaryDirectory() as folder:
        saved = os.path.join(folder, "saved_model")
        model.export(saved, format="tf_saved_model", verbose=False)
        flat = _convert(saved, sparse=False, quantize=quantize)
        data = _convert(saved, sparse=True, quantize=quantize) if sparse else flat
    with open(path, "wb") as f:
        f.write(data)
    report = {
        "path": path,
        "bytes": len(data),
        "gzip_bytes": len(gzip.compress(data)),
        "dense_bytes": len(flat),
        "dense_gzip_bytes": len(gzip.compress(flat)),
        "op_resolver": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
        if sparse and quantize == "int8"
        else "default",
    }
    if optimize_for == "latency":
        report["layers"] = tflite_inspection.inspect_tflite(data, model)
        report["accelerated"] = sum(row["storage"] == tflite_inspection.SPARSE for row in report["layers"])
    return report


def _convert(saved_model, sparse, quantize):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    optimizations = []
    if quantize == "int8":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    return converter.convert()


def _run_in_tensorflow(model, flags):
    """Saves `model` to a `.keras` file and exports it from a TensorFlow
    backend process (`keras-dstee export`), returning its JSON report."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "model.keras")
        model.save(source)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        command = [sys.executable, "-m", "keras_dstee.cli", "export", source, *flags, "--json"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            "Export under the TensorFlow backend failed:\n" + result.stderr[-3000:]
        )
    return json.loads(result.stdout.strip().splitlines()[-1])
