"""Export SavedModel and sparse TFLite files.

The kernels are physically zero, so a sparse model is a plain Keras model
(`keras_dstee.strip` removes the training wrapper). TFLite
conversion needs TensorFlow's graph: on the TensorFlow backend it runs in
process; from JAX or PyTorch the model goes through its backend-neutral
`.keras` file into a TensorFlow-backend process (`tensorflow_worker`).
"""

import gzip
import os
import re
import tempfile
import warnings

import keras
import numpy as np

from keras_dstee import arguments
from keras_dstee import calibration
from keras_dstee.deploy import activation_ranges as ranges_lib
from keras_dstee.deploy import quiet
from keras_dstee.deploy import tensorflow_worker
from keras_dstee.deploy import tflite_inspection
from keras_dstee.deploy import tflite_rewrite
from keras_dstee.deploy import tflite_runner
from keras_dstee.structure import slimming

QUANTIZE = (None, "int8")
OPTIMIZE_FOR = ("size", "latency")
IO_DTYPES = ("float32", "int8")


# What a file of each kind is named, so a path that names another kind is
# refused before the conversion, not discovered after it.
SUFFIXES = {".tflite": "TFLite", ".onnx": "ONNX", ".keras": "Keras", ".h5": "HDF5", ".npz": "NumPy", ".npy": "NumPy"}


def check_output_path(path, suffix=None):
    """Refuses, before any work, an output path that cannot be written: a
    missing folder; for a file (`suffix`), an existing folder or a name of
    another format (warns on an unknown suffix)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"`path` must be a file path (str). Received: {type(path).__name__} {path!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"The folder of the output path does not exist: {folder}")
    if suffix is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"`path` is an existing folder: {path}. Give the {SUFFIXES[suffix]} file to write, e.g. "
                         f"{os.path.join(path, 'model' + suffix)}")
    ext = os.path.splitext(path)[1].lower()
    if ext in SUFFIXES and ext != suffix:
        raise ValueError(f"`path` ends in {ext!r}, the suffix of {SUFFIXES[ext]} files, but this writes a "
                         f"{SUFFIXES[suffix]} file: name it with {suffix!r}.")
    if ext and ext != suffix:
        warnings.warn(f"Writing a {SUFFIXES[suffix]} file to {path}, whose suffix is not {suffix!r}.", stacklevel=3)


def mark_called(model):
    """Keras exports only a model that has been called; a freshly loaded one
    has not. One call on zeros (batch 1) fixes that: at its inputs' shapes,
    or a subclassed model's build shape."""
    if getattr(model, "_called", False):
        return
    try:
        specs = [(t.shape, t.dtype) for t in model.inputs]
    except (AttributeError, ValueError):
        shape = (model.get_build_config() or {}).get("input_shape")
        if shape is None or not all(isinstance(d, (int, type(None))) for d in shape):
            raise ValueError(
                "This model has never been called and its input shape is unknown (a subclassed model): "
                "call it once on a batch of inputs, then export."
            ) from None
        specs = [(shape, "float32")]
    zeros = [np.zeros(tuple(1 if d is None else d for d in s), d) for s, d in specs]
    model(zeros[0] if len(zeros) == 1 else zeros, training=False)


def export_saved_model(model, path, slim=False):
    """Exports `model`'s inference function as a TensorFlow SavedModel.

    Works from every backend: TensorFlow and JAX export directly (JAX through
    jax2tf); PyTorch rebuilds the model from its `.keras` file under the
    TensorFlow backend in another process. The model itself is not modified.

    Args:
        model: a Keras model.
        path: the folder to write.
        slim: export `keras_dstee.slim(model)`: without the channels that
            change no output.

    Returns:
        `path`.
    """
    arguments.keras_model(model, "export_saved_model")
    check_output_path(path)
    if slim:
        model = slimming.slim(model)
    if keras.backend.backend() in ("tensorflow", "jax"):
        with quiet.quiet():
            model.export(path, format="tf_saved_model", verbose=False)
        return path
    tensorflow_worker.run(model, "export_saved_model", path, {})
    return path


def export_tflite(
    model,
    path,
    sparse=True,
    quantize=None,
    optimize_for="size",
    slim=False,
    representative_data=None,
    io_dtype="float32",
    per_channel=True,
    activation_ranges="auto",
):
    """Exports `model` to a TFLite file, storing sparse kernels compactly.

    A sparse file is always smaller. It is faster only where TFLite has a
    sparse kernel: float `Dense` layers trained with `block_size=(4, 1)`
    (int8 ones with `(16, 1)`) run on TFLite's sparse FullyConnected kernel;
    other sparse weights (conv, unstructured Dense) are made dense when the
    interpreter loads them. `optimize_for="latency"` reports, per prunable
    kernel, which happens.

    Every file written runs in the default interpreter
    (`Interpreter(model_path=path)`): int8 weights the default XNNPack
    delegate cannot load in TFLite's sparse format are stored dense (the
    report's `int8_stored_dense`), and the file is run once before it is
    written.

    Args:
        model: a Keras model (trained sparse or not), on any backend.
        path: the `.tflite` file to write.
        sparse: store kernels with TFLite's sparse format
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`).
        quantize: `None` (float32) or `"int8"`: with `representative_data`,
            full-integer int8 (weights and activations, calibrated on it);
            without, dynamic-range int8 (int8 weights, float activations).
        optimize_for: `"size"`, or `"latency"`: the sparse conversion, except
            that a weight on TFLite's sparse FullyConnected kernel is stored
            dense where that kernel is slower than dense (a Dense layer over
            several rows per sample: tokens, pixels), so the file is never
            slower than dense; the converted graph is inspected and the
            report gets `layers` (per prunable kernel: its TFLite `op` and
            `storage`, `"sparse kernel"`, `"densified at load"`, `"dense"` or
            `"dense (faster here)"`, with a `reason`) and `accelerated` (how
            many run on a sparse kernel); a warning says why when none does.
        slim: export `keras_dstee.slim(model)`: without the channels that
            change no output (a smaller, faster dense network that keeps its
            zeros).
        representative_data: inputs to calibrate full-integer quantization
            on (a few hundred samples; the first 300 are used): a NumPy
            array, a `tf.data.Dataset` or a generator yielding `x` or
            `(x, y)`, batched or not. Needs `quantize="int8"`.
        io_dtype: `"float32"` (the file quantizes its input and dequantizes
            its output itself) or `"int8"` (the caller passes int8 inputs
            and reads int8 outputs, with the scales in the file's input and
            output details); `"int8"` needs full-integer quantization.
        per_channel: full-integer int8 weights get one scale per output
            channel (`True`, TFLite's default) or one per weight tensor
            (`False`).
            Per channel, every output channel stores a float32 scale for
            its weight and one for its bias: 16 % of a 98 %-sparse
            ResNet-50-CIFAR file (1.54 -> 1.29 MB, measured).
            One scale per weight tensor is coarser: measure the file's accuracy
            with `evaluate_tflite`.
        activation_ranges: the int8 range of each activation tensor in a
            full-integer file: `"minmax"`, TFLite's (the extremes over the
            calibration samples), or `"auto"`: TFLite's and narrower
            candidates (the means of the extremes over groups of 64, 16, 4
            and 1 samples, which clip values rare samples reach) are each
            quantized and run on the calibration samples, and the file
            whose outputs agree best with the model's is written (TFLite's
            on a tie; a model with several outputs gets TFLite's). A
            98 %-sparse ResNet-50-CIFAR: 18.9 % -> 30.9 % test accuracy,
            Keras 31.6 % (`benchmarks/int8_reference.py`).

    Returns:
        A dict: `path`; `bytes` and `gzip_bytes` of the file; `dense_bytes`
        and `dense_gzip_bytes` of the same export without the sparse format;
        `quantization`: `"float32"`, `"dynamic_range_int8"` or
        `"full_int8"`; `per_channel` (full int8 only); `int8_stored_dense`:
        names of the int8 weights stored dense for the default interpreter;
        `op_resolver`: always `"default"`; `calibration_agreement` (full
        int8, a model with one class-score output): the share of the
        calibration samples on which the file picks the model's class (a
        warning below 0.8); `activation_ranges` (full int8): the ranges
        written (`"minmax"` or `"mean over groups of g"`), and with `"auto"`
        `activation_range_scores`, each candidate's agreement.
    """
    arguments.keras_model(model, "export_tflite")
    if quantize not in QUANTIZE:
        raise ValueError(f"`quantize` must be one of {QUANTIZE}. Received: quantize={quantize!r}")
    if optimize_for not in OPTIMIZE_FOR:
        raise ValueError(f"`optimize_for` must be one of {OPTIMIZE_FOR}. Received: optimize_for={optimize_for!r}")
    if optimize_for == "latency" and not sparse:
        raise ValueError("`optimize_for='latency'` needs the sparse format: leave `sparse=True`.")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"`io_dtype` must be one of {IO_DTYPES}. Received: io_dtype={io_dtype!r}")
    if representative_data is not None and quantize != "int8":
        raise ValueError(
            "`representative_data` calibrates full-integer quantization: pass `quantize='int8'` with it."
        )
    if io_dtype == "int8" and representative_data is None:
        raise ValueError(
            "`io_dtype='int8'` needs full-integer quantization: pass `quantize='int8'` and "
            "`representative_data` (a few hundred input samples)."
        )
    if activation_ranges not in ranges_lib.ACTIVATION_RANGES:
        raise ValueError(
            f"`activation_ranges` must be one of {ranges_lib.ACTIVATION_RANGES}. "
            f"Received: activation_ranges={activation_ranges!r}"
        )
    if not isinstance(per_channel, bool):
        raise ValueError(f"`per_channel` must be True or False. Received: per_channel={per_channel!r}")
    if activation_ranges != "auto" and representative_data is None:
        raise ValueError(
            "`activation_ranges` applies to full-integer int8: pass `quantize='int8'` and "
            "`representative_data` (a few hundred input samples)."
        )
    if not per_channel and representative_data is None:
        raise ValueError(
            "`per_channel=False` applies to full-integer int8: pass `quantize='int8'` and "
            "`representative_data` (a few hundred input samples)."
        )
    check_output_path(path, ".tflite")
    samples = None
    if representative_data is not None:
        samples = calibration.calibration_samples(representative_data, calibration.input_shapes(model))
    if slim:
        model = slimming.slim(model)
    # TensorFlow's and TFLite's own log lines stay out of the user's output.
    with quiet.quiet():
        # The model's output on the calibration samples, predicted once: it
        # scores the activation-range candidates and the file written.
        expected = _expected_output(model, samples)
        if keras.backend.backend() != "tensorflow":
            options = {
                "sparse": sparse, "quantize": quantize, "optimize_for": optimize_for, "io_dtype": io_dtype,
                "per_channel": per_channel, "activation_ranges": activation_ranges,
            }
            report = tensorflow_worker.run(model, "export_tflite", path, options, samples)
        else:
            report = _export_tflite_here(
                model, path, sparse, quantize, optimize_for, samples, io_dtype, per_channel, activation_ranges, expected
            )
        if expected is not None:
            _check_agreement(path, samples, expected, report)
    if optimize_for == "latency" and report["accelerated"] == 0:
        reasons = sorted({f"{row['storage']}: {row['reason']}" for row in report["layers"]})
        warnings.warn(
            "No layer of this TFLite file runs on a sparse kernel, so it is "
            "smaller but not faster than dense. " + "; ".join(reasons),
            stacklevel=2,
        )
    return report


# Below this share of the calibration samples on which the full-int8 file
# and the Keras model pick the same class, `export_tflite` warns. Measured
# on 300 CIFAR training images, ResNet-50-CIFAR at 0.98 with TFLite's
# activation ranges: quarter width 0.92 (test accuracy within 1 point);
# full width, 5 epochs, 0.26 (31.6 -> 18.9 %); with the ranges
# `activation_ranges="auto"` chose, 0.95 and 0.86 (both within 1 point).
AGREEMENT_WARNING = 0.8


def _check_agreement(path, samples, expected, report):
    """How often the full-int8 file at `path` picks the Keras model's class
    (`expected`, its output) on the calibration samples
    (`report["calibration_agreement"]`, for an output of class scores);
    warns when it seldom does."""
    agreement = tflite_runner.class_agreement(path, samples, expected)
    if agreement is None:
        return
    report["calibration_agreement"] = agreement
    if agreement < AGREEMENT_WARNING:
        advice = (
            "; `activation_ranges='auto'` (the default) tries narrower ranges"
            if "activation_range_scores" not in report
            else ""
        )
        warnings.warn(
            f"The full-int8 file picks the Keras model's class on only {agreement:.0%} of the "
            f"{len(samples[0])} calibration samples: one int8 range per activation tensor "
            f"({report['activation_ranges']}) cannot hold this model's activations. Measure it with "
            "`keras_dstee.evaluate_tflite`; dynamic-range int8 (no `representative_data`) "
            f"keeps float activations{advice}.",
            stacklevel=3,
        )


def _export_tflite_here(
    model,
    path,
    sparse,
    quantize,
    optimize_for,
    samples=None,
    io_dtype="float32",
    per_channel=True,
    activation_ranges="auto",
    expected=None,
):
    """`export_tflite` on the TensorFlow backend; `expected`: the model's
    output on `samples` (None for several outputs)."""
    chosen = {}
    with tempfile.TemporaryDirectory() as folder:
        saved = os.path.join(folder, "saved_model")
        model.export(saved, format="tf_saved_model", verbose=False)
        settings = {"quantize": quantize, "samples": samples, "io_dtype": io_dtype, "per_channel": per_channel}
        if samples is not None:
            scored = expected if activation_ranges == "auto" else None
            raw, chosen = ranges_lib.quantize(_converter(saved, **settings), samples, scored, per_channel, io_dtype)
            raw_sparse = ranges_lib.sparsify(raw) if sparse else None
        else:
            raw = _convert(saved, sparse=False, **settings)
            raw_sparse = _convert(saved, sparse=True, **settings) if sparse else None
        flat = _runnable(raw)[0]
        if quantize is not None:
            flat = tflite_rewrite.quantization_stored_once(flat)
        data, rewritten = flat, []
        if sparse:
            data, rewritten = _runnable(raw_sparse)
            if quantize is not None:
                data = tflite_rewrite.quantization_stored_once(data)
            data = tflite_rewrite.narrowest_sparse_indices(data)
    kept_dense = []
    if optimize_for == "latency":
        data, kept_dense = tflite_rewrite.dense_where_sparse_is_slower(data, flat)
    _check_default_interpreter(data)
    with open(path, "wb") as f:
        f.write(data)
    if quantize is None:
        quantization = "float32"
    else:
        quantization = "full_int8" if samples is not None else "dynamic_range_int8"
    report = {
        "path": path,
        "bytes": len(data),
        "gzip_bytes": len(gzip.compress(data)),
        "dense_bytes": len(flat),
        "dense_gzip_bytes": len(gzip.compress(flat)),
        "quantization": quantization,
        **({"per_channel": per_channel} if samples is not None else {}),
        **chosen,
        "int8_stored_dense": rewritten,
        "op_resolver": "default",
    }
    if optimize_for == "latency":
        report["layers"] = tflite_inspection.inspect_tflite(data, model, rewritten, kept_dense)
        report["accelerated"] = sum(row["storage"] == tflite_inspection.SPARSE for row in report["layers"])
    return report


def _runnable(data):
    """`data` rewritten so it runs in the default interpreter, and the
    weights that were stored dense for it; an error if it still fails."""
    # First, so the default interpreter never reads a sparse weight as dense.
    data = tflite_rewrite.sparse_weights_to_the_sparse_kernel(data)
    rewritten = []
    error = tflite_runner.default_interpreter_error(data)
    while error is not None:
        # Only the failing node's weights: one unstructured classifier made
        # a quarter-width ResNet-50's every conv weight dense (1.6 MB, not
        # 0.2 MB). Without a node number, all of them.
        failing = re.search(r"node #(\d+)", error)
        data, names = tflite_rewrite.densify_int8_weights(data, int(failing.group(1)) if failing else None)
        if not names and failing:
            data, names = tflite_rewrite.densify_int8_weights(data)
        if not names:
            break
        rewritten += names
        error = tflite_runner.default_interpreter_error(data)
    if error is not None:
        raise RuntimeError(f"The converted TFLite file does not run in the default interpreter: {error}")
    return data, rewritten


# Largest difference allowed between the default interpreter's outputs and
# TFLite's builtin kernels', over the largest output. Measured: weights
# misread as dense (dynamic-range (16, 1)-block MLP before the fix) 2.0-10.1;
# XNNPack's and TFLite's int8 rounding through a trained 98 %-sparse
# ResNet-50 (quarter width) 0.03-0.15 (full and dynamic-range int8; both
# within 5 % of Keras on test images); float32 0.
DEFAULT_INTERPRETER_TOLERANCE = 0.5


def _check_default_interpreter(data):
    """Refuses a file the default interpreter computes wrongly."""
    deviation = tflite_runner.default_interpreter_deviation(data)
    if deviation > DEFAULT_INTERPRETER_TOLERANCE:
        raise RuntimeError(
            "The default TFLite interpreter computes this file differently from TFLite's own kernels "
            f"(largest difference {deviation:.1%} of the largest output): a TFLite delegate bug. "
            "Nothing was written; export with `sparse=False`, and please report the model."
        )


def _expected_output(model, samples):
    """The model's output on the calibration samples, or None where there
    is nothing to calibrate or the model has several outputs."""
    if samples is None:
        return None
    output = model.predict(samples if len(samples) > 1 else samples[0], batch_size=32, verbose=0)
    return None if isinstance(output, (list, tuple, dict)) else keras.ops.convert_to_numpy(output)


def _convert(saved_model, sparse, quantize, samples=None, io_dtype="float32", per_channel=True):
    return _converter(saved_model, sparse, quantize, samples, io_dtype, per_channel).convert()


def _converter(saved_model, sparse=False, quantize=None, samples=None, io_dtype="float32", per_channel=True):
    """TFLite's converter set up for the export."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    optimizations = []
    if quantize == "int8":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if samples is not None:
        # Full integer: every op int8, activation ranges from the samples.
        converter.representative_dataset = calibration.representative_dataset(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # TFLite's converter has no public switch for it.
        converter._experimental_disable_per_channel = not per_channel
        if io_dtype == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter
