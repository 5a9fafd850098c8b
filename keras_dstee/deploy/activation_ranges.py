"""Activation ranges of a full-integer int8 TFLite file, chosen so the file
agrees with the model.

A full-int8 file holds each activation tensor on 256 levels between one
min and one max. TFLite's calibrator takes them as the extremes over all
calibration samples, so a value that one rare sample reaches sets the
levels for every sample. Narrower ranges clip those rare values and give
every other sample finer levels; they can also clip values the model
needs. So the ranges are chosen on the calibration samples: each candidate
is quantized and run on them, and the file whose outputs agree best with
the model's wins. The candidates are TFLite's extremes and the means, over
groups of g consecutive samples, of each group's extremes (as
quantization-aware training's moving averages track them over batches):
g = 1 clips most.

Measured (`benchmarks/int8_reference.py`, 300 calibration and 1,000 test
images): a 98 %-sparse full-width ResNet-50-CIFAR (5 epochs) agrees with
its file on 26 % of the calibration images with TFLite's ranges (test
accuracy 18.9 %, Keras 31.6 %) and on 86 % with the means over groups of 4
(30.9 %); its quarter-width twin on 92 % with TFLite's (42.4 %, Keras
41.6 %), 95 % with groups of 16 (41.7 %) and 82 % with groups of 1.
"""

import numpy as np

from keras_dstee.deploy import tflite_rewrite
from keras_dstee.deploy import tflite_runner

ACTIVATION_RANGES = ("auto", "minmax")
# Group sizes of the clipped candidates, the least clipping first: a tie
# keeps the wider ranges.
GROUPS = (64, 16, 4, 1)


def quantize(converter, samples, expected=None, per_channel=True, io_dtype="float32"):
    """Full-integer int8 through `converter` (set up for it, without the
    sparse format) with the activation ranges on which the file's outputs
    for `samples` agree best with `expected`, the model's first output;
    without `expected`, TFLite's ranges (`"minmax"`).

    Returns the file's bytes and a dict: `activation_ranges` (the label of
    the ranges used: `"minmax"`, TFLite's, or `"mean over groups of g"`) and
    `activation_range_scores` (each candidate's agreement: the share of
    samples with the model's class, or for other outputs minus the squared
    error relative to the output's variance; only with `expected`).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as lite_convert

    # The converter stops after calibration: a float file recording each
    # activation's extremes, which the quantizer reads.
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    recorded = tflite_rewrite.recorded_ranges(calibrated)
    io = tf.int8 if io_dtype == "int8" else tf.float32

    def quantized(ranges):
        return lite_convert.mlir_quantize(
            tflite_rewrite.with_ranges(calibrated, _widen_constants({**recorded, **ranges})),
            disable_per_channel=not per_channel,
            input_data_type=io,
            output_data_type=io,
        )

    if expected is None:
        return quantized({}), {"activation_ranges": "minmax"}
    best = None
    scores = {}
    for label, ranges in _candidates(calibrated, recorded, samples):
        data = quantized(ranges)
        scores[label] = _agreement(data, samples, expected)
        if best is None or scores[label] > scores[best[0]]:
            best = (label, data)
    return best[1], {"activation_ranges": best[0], "activation_range_scores": scores}


def _widen_constants(ranges):
    """`ranges` with each tensor that was constant on every calibration
    sample (a layer of ReLUs that never fired: its range is 0 to 1e-38)
    given the median width of the others, from 0 past its value. Zero (the
    usual constant) is still held exactly, on inputs where the tensor is
    not constant it has levels to use, and the op that computes it keeps a
    requantization scale XNNPACK accepts: with the recorded range the scale
    was over 1,000 (a dead 4-unit Dense layer of a shrunk net), above
    XNNPACK's limit of 256, and the file could not run."""
    widths = [high - low for low, high in ranges.values() if not _constant(low, high)]
    if not widths:
        return ranges
    width = float(np.median(widths))
    widened = dict(ranges)
    for index, (low, high) in ranges.items():
        if _constant(low, high):
            # Its range includes 0, as TFLite's does, and grows away from it.
            low, high = min(low, 0.0), max(high, 0.0)
            if low < 0:
                low = min(low, high - width)
            else:
                high = max(high, width)
            widened[index] = (low, high)
    return widened


def _constant(low, high):
    return high - low <= 1e-6 * max(1.0, abs(low), abs(high))


def sparsify(tflite_bytes):
    """The quantized file with TFLite's sparse format, as the converter
    writes it with `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`."""
    from tensorflow.lite.python import convert as lite_convert

    return lite_convert.mlir_sparsify(tflite_bytes)


def _candidates(calibrated, recorded, samples):
    """(label, ranges) pairs, the ranges replacing `recorded` ones: TFLite's
    extremes first (none replaced), then group means over fewer and fewer
    samples."""
    yield "minmax", {}
    tensors = sorted(recorded)
    low, high = _extremes_per_sample(calibrated, tensors, samples)
    count = len(low)
    for group in GROUPS:
        if group >= count:
            continue
        groups = np.array_split(np.arange(count), -(-count // group))
        mean_low = np.mean([low[g].min(0) for g in groups], axis=0)
        mean_high = np.mean([high[g].max(0) for g in groups], axis=0)
        # A constant or empty tensor keeps its recorded range.
        yield f"mean over groups of {group}", {
            index: (float(mean_low[i]), float(mean_high[i]))
            for i, index in enumerate(tensors)
            if mean_high[i] > mean_low[i]
        }


def _extremes_per_sample(calibrated, tensors, samples):
    """Each sample's min and max of each of `tensors`, `(samples, tensors)`
    arrays, from TFLite's builtin float kernels."""
    interpreter = tflite_runner.open_interpreter(calibrated, builtin_only=True, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    count = len(samples[0])
    low, high = np.zeros((count, len(tensors))), np.zeros((count, len(tensors)))
    for s in range(count):
        for detail, array in zip(inputs, samples):
            interpreter.set_tensor(detail["index"], array[s : s + 1].astype(detail["dtype"]))
        interpreter.invoke()
        for i, index in enumerate(tensors):
            values = interpreter.get_tensor(index)
            # An empty tensor has no extremes (NaN): it keeps its recorded range.
            low[s, i], high[s, i] = (values.min(), values.max()) if values.size else (np.nan, np.nan)
    return low, high


def _agreement(tflite_bytes, samples, expected):
    share = tflite_runner.class_agreement(tflite_bytes, samples, expected)
    if share is not None:
        return share
    scores = tflite_runner.predict_tflite(tflite_bytes, samples)
    error = np.mean((scores.reshape(expected.shape) - expected) ** 2)
    return float(-error / (np.var(expected) + 1e-12))
