"""Calibration samples for full-integer TFLite quantization.

The converter measures each activation's range on a few hundred inputs (its
`representative_dataset`). Users hold those inputs as a NumPy array, a
`tf.data.Dataset` or a generator, batched or not, alone or with labels; this
module turns any of them into one array per model input, one sample per row,
so the samples can also travel to a TensorFlow-backend process as `.npz`.
`recalibrate_batch_norm` reads its data the same way.
"""

import numpy as np

DEFAULT_SAMPLES = 300


def _inputs_of(element):
    """The model input of one element of the user's data: Keras's `fit`
    convention, `x` or `(x, y)` or `(x, y, sample_weight)`."""
    if isinstance(element, tuple) and len(element) in (2, 3):
        return element[0]
    return element


def _as_list(x, count, argument):
    if isinstance(x, dict):
        raise ValueError(
            f"`{argument}` with dict inputs is not supported: pass the inputs as a list in the model's input order."
        )
    if isinstance(x, (list, tuple)):
        return [np.asarray(v) for v in x]
    if count != 1:
        raise ValueError(f"The model has {count} inputs, but `{argument}` gives one array per element.")
    return [np.asarray(x)]


def input_shapes(model):
    """The model's input shapes (batch axis included), or None for a
    subclassed model, whose inputs are known only from the data."""
    try:
        return [tuple(t.shape) for t in model.inputs]
    except (AttributeError, ValueError):
        return None


def load_samples(path):
    """Samples saved by `np.save` (one input) or `np.savez` (inputs in
    order, `arr_0`, `arr_1`, ...)."""
    loaded = np.load(path)
    if isinstance(loaded, np.ndarray):
        return [loaded]
    return [loaded[f"arr_{i}"] for i in range(len(loaded.files))]


def calibration_samples(data, input_shapes, limit=DEFAULT_SAMPLES, argument="representative_data"):
    """One array per model input, at most `limit` samples each.

    Args:
        data: a NumPy array (samples on the first axis), a `tf.data.Dataset`
            or any iterable (a generator) yielding `x`, `(x, y)` or
            `(x, y, sample_weight)`, batched or single samples; for several
            inputs, `x` is a list of arrays in the model's input order.
        input_shapes: the model's input shapes, batch axis included (None:
            unknown; one input, every element batched).
        limit: how many samples to keep.
        argument: the user's name for `data`, for the error messages.

    Returns:
        A list of arrays, one per model input, each `(n, *sample_shape)`.
    """
    if isinstance(data, (list, tuple)) and data and all(isinstance(v, (int, float)) for v in data):
        data = np.asarray(data)  # plain numbers: an array, checked below
    if input_shapes is None:
        input_shapes = [(None,) * (np.ndim(_first_array(data, argument)) or 1)]
    count = len(input_shapes)
    if isinstance(data, np.ndarray) or (isinstance(data, list) and data and isinstance(data[0], np.ndarray)
                                        and count > 1 and len(data) == count):
        arrays = [_batched(a, shape, argument) for a, shape in zip(_as_list(data, count, argument), input_shapes)]
        if len(arrays[0]) == 0:
            raise ValueError(f"`{argument}` holds no samples: pass a few hundred input samples.")
        return [_check(a[:limit], shape, argument) for a, shape in zip(arrays, input_shapes)]
    if hasattr(data, "as_numpy_iterator"):
        data = data.as_numpy_iterator()
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise ValueError(
            f"`{argument}` must be a NumPy array, a tf.data.Dataset or a generator of "
            f"inputs. Received: {type(data).__name__}"
        )
    iterator = iter(data)
    parts = [[] for _ in range(count)]
    taken = 0
    for element in iterator:
        arrays = _as_list(_inputs_of(element), count, argument)
        if len(arrays) != count:
            raise ValueError(f"The model has {count} inputs, but an element of `{argument}` has {len(arrays)}.")
        arrays = [_batched(a, shape, argument) for a, shape in zip(arrays, input_shapes)]
        for part, a in zip(parts, arrays):
            part.append(a)
        taken += len(arrays[0])
        if taken >= limit:
            break
    if taken == 0:
        raise ValueError(f"`{argument}` yielded no samples.")
    return [_check(np.concatenate(part)[:limit], shape, argument) for part, shape in zip(parts, input_shapes)]


def _batched(array, shape, argument):
    """`array` with a batch axis: a single sample has one axis fewer than
    the model's input."""
    if array.ndim == len(shape) - 1:
        return array[None]
    if array.ndim != len(shape):
        _wrong_shape(array, shape, argument)
    return array


def _wrong_shape(array, shape, argument):
    sample = tuple(shape[1:])
    raise ValueError(
        f"`{argument}` must hold input samples of shape {sample} (batched: (n, *{sample})), "
        f"but got an array of shape {array.shape}."
    )


def _first_array(data, argument):
    if isinstance(data, np.ndarray):
        return data
    raise ValueError(
        f"For a subclassed model, pass `{argument}` as a NumPy array of input samples "
        "(its inputs are not known before a call)."
    )


def _check(array, shape, argument):
    sample = tuple(shape[1:])
    if array.ndim != len(shape) or any(d is not None and d != a for d, a in zip(sample, array.shape[1:])):
        _wrong_shape(array, shape, argument)
    if not (np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"`{argument}` must hold numbers, but its samples are of type {array.dtype}.")
    # Integer inputs (token ids) stay integers; images and features are float32.
    if np.issubdtype(array.dtype, np.integer):
        return array
    array = array.astype("float32")
    if not np.all(np.isfinite(array)):
        # NaN or inf would set the int8 ranges: a file that agrees with nothing.
        bad = int(np.sum(~np.all(np.isfinite(array.reshape(len(array), -1)), axis=1)))
        raise ValueError(f"`{argument}` has {bad} sample(s) with NaN or inf values: pass finite inputs.")
    return array


def representative_dataset(samples):
    """The converter's `representative_dataset`: one sample at a time."""

    def generate():
        for i in range(len(samples[0])):
            yield [s[i : i + 1] for s in samples]

    return generate
