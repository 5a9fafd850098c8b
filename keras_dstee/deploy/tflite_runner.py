"""Runs `.tflite` files: predictions, accuracy, and whether a file loads in
the default interpreter (`Interpreter(model_path=...)`, XNNPack applied)."""

import functools

import numpy as np


def interpreter_class():
    """LiteRT's interpreter (TensorFlow's deprecated copy as a fallback) and
    its `OpResolverType`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:  # pragma: no cover (an older environment)
        from tensorflow.lite.python.interpreter import Interpreter
        from tensorflow.lite.python.interpreter import OpResolverType
    return Interpreter, OpResolverType


def open_interpreter(model, num_threads=None, builtin_only=False, **options):
    """An interpreter for a file path or the file's bytes; `builtin_only`:
    TFLite's own kernels, no delegate (the graph as converted)."""
    Interpreter, OpResolverType = interpreter_class()
    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
    if builtin_only:
        options["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(**source, num_threads=num_threads, **options)


def _invoke(interpreter, fill=None):
    """Allocates and runs once on inputs `fill(detail)` (zeros by default)."""
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        value = fill(detail) if fill else np.zeros(detail["shape"], detail["dtype"])
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()


def default_interpreter_error(tflite_bytes):
    """None if the file loads and runs once in the default interpreter, else
    the interpreter's error message."""
    try:
        _invoke(open_interpreter(tflite_bytes))
    except (RuntimeError, ValueError) as error:
        return str(error).strip()
    return None


def _random_input(rng, detail):
    if np.issubdtype(detail["dtype"], np.floating):
        return rng.normal(size=detail["shape"]).astype(detail["dtype"])
    if detail["dtype"] in (np.int8, np.uint8):
        info = np.iinfo(detail["dtype"])
        return rng.integers(info.min, info.max + 1, size=detail["shape"]).astype(detail["dtype"])
    return np.zeros(detail["shape"], detail["dtype"])  # indices: 0 is always valid


def default_interpreter_deviation(tflite_bytes, inputs=3):
    """How far the default interpreter's outputs are from TFLite's builtin
    kernels' (the graph as converted): the largest difference over the
    largest builtin output (dequantized), on random batch-1 inputs, the
    smallest of `inputs` of them. A misread weight is far off on every
    input; int8 rounding, which the two sets of kernels do differently, can
    add up through a deep network on an unlucky one."""
    return min(_deviation(tflite_bytes, seed) for seed in range(inputs))


def _deviation(tflite_bytes, seed):
    outputs = []
    for builtin_only in (False, True):
        interpreter = open_interpreter(tflite_bytes, builtin_only=builtin_only)
        # A fresh generator per run: the same input for both.
        _invoke(interpreter, functools.partial(_random_input, np.random.default_rng(seed)))
        outputs.append(
            [_from_output(interpreter.get_tensor(d["index"]), d).astype("float64") for d in interpreter.get_output_details()]
        )
    default, builtin = (np.concatenate([o.ravel() for o in run]) for run in outputs)
    return float(np.max(np.abs(default - builtin), initial=0.0) / max(np.max(np.abs(builtin), initial=0.0), 1e-12))


def tensor_values(tflite_bytes, tensors):
    """The values of main-graph tensors after one batch-1 run of the builtin
    kernels (no delegate) on zeros: what `DENSIFY` expands weights to, and
    the shapes the graph computes at run time."""
    interpreter = open_interpreter(tflite_bytes, builtin_only=True, experimental_preserve_all_tensors=True)
    _invoke(interpreter)
    return [interpreter.get_tensor(index).copy() for index in tensors]


def _to_input(x, detail):
    scale, zero_point = detail["quantization"]
    if np.issubdtype(detail["dtype"], np.integer) and scale:
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])
    return np.asarray(x, detail["dtype"])


def _from_output(y, detail):
    scale, zero_point = detail["quantization"]
    if np.issubdtype(detail["dtype"], np.integer) and scale:
        return (y.astype("float32") - zero_point) * scale
    return y


def predict_tflite(path, x, batch_size=32, num_threads=None):
    """The first output of the TFLite file at `path` (or its bytes) for the
    samples `x` (an array, or a list of arrays for several inputs), as
    float32; int8 inputs and outputs are (de)quantized with the file's own
    scales."""
    interpreter = open_interpreter(path, num_threads=num_threads)
    inputs = interpreter.get_input_details()
    xs = [np.asarray(a) for a in (x if isinstance(x, (list, tuple)) else [x])]
    if len(xs) != len(inputs):
        raise ValueError(f"The file takes {len(inputs)} inputs; received {len(xs)} arrays.")
    for detail, a in zip(inputs, xs):
        _check_sample_shape(detail, a)
    outputs = []
    resized = None
    for start in range(0, len(xs[0]), batch_size):
        batch = [a[start : start + batch_size] for a in xs]
        if resized != len(batch[0]):
            for detail, a in zip(inputs, batch):
                interpreter.resize_tensor_input(detail["index"], a.shape)
            interpreter.allocate_tensors()
            resized = len(batch[0])
        for detail, a in zip(inputs, batch):
            interpreter.set_tensor(detail["index"], _to_input(a, detail))
        interpreter.invoke()
        detail = interpreter.get_output_details()[0]
        outputs.append(_from_output(interpreter.get_tensor(detail["index"]), detail))
    return np.concatenate(outputs)


def _check_sample_shape(detail, array):
    """Refuses samples whose shape differs from the file's input where the
    file fixes it: the interpreter would resize the graph and compute an
    answer for inputs the model never took."""
    signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    fixed = tuple(None if d < 0 else d for d in signature[1:])
    sample = array.shape[1:]
    if len(sample) != len(fixed) or any(f is not None and f != s for f, s in zip(fixed, sample)):
        raise ValueError(
            f"The file's input {detail['name']!r} takes samples of shape {fixed} (None: any size), "
            f"but `x` has samples of shape {tuple(sample)}."
        )


def class_agreement(path, x, expected):
    """The share of samples `x` on which the file's class (the largest of
    its first output) is the one `expected` (a model's class scores, one
    row per sample) picks; None when `expected` is not class scores."""
    if expected.ndim != 2 or expected.shape[-1] < 2:
        return None
    return float(np.mean(predict_tflite(path, x).argmax(-1) == expected.argmax(-1)))


def evaluate_tflite(path, x, y, batch_size=32, num_threads=None):
    """Classification accuracy of a TFLite file on `(x, y)`, run by the
    default TFLite interpreter: what a user ships, measured.

    Args:
        path: a `.tflite` file (float32, dynamic-range or full int8).
        x: the inputs, as for `model.evaluate`: an array, or a list of
            arrays in the model's input order.
        y: integer class labels `(n,)`, or one-hot `(n, classes)`.
        batch_size: samples per interpreter call.
        num_threads: interpreter threads (None: TFLite's default).

    Returns:
        The fraction of samples whose largest output is the label.
    """
    y = np.asarray(y)
    scores = predict_tflite(path, x, batch_size, num_threads)
    if scores.ndim != 2 or scores.shape[-1] < 2:
        raise ValueError(
            f"evaluate_tflite measures accuracy over class scores; the file's output has shape {scores.shape[1:]}."
        )
    labels = y.argmax(-1) if y.ndim == 2 else y.reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"`x` has {len(scores)} samples but `y` has {len(labels)} labels.")
    return float(np.mean(scores.argmax(-1) == labels))
