"""Re-estimating BatchNormalization statistics after sparse training.

A BatchNormalization layer's moving mean and variance follow the training
batches with momentum 0.99, so they also remember the inputs of a few
hundred steps ago. When channels go during training (`channel_sparsity`),
the layers after them see other inputs at every mask update, and at the end
of a short run the moving statistics still carry the old ones: the model
does worse in inference than in training (docs/channels.md). Averaging the
batch statistics of the final weights over some training data, as PyTorch's
`torch.optim.swa_utils.update_bn` does after weight averaging, removes that
gap; no weight changes.
"""

import contextlib

import keras
import numpy as np

from keras_dstee import arguments
from keras_dstee import calibration


def recalibrate_batch_norm(model, x, batch_size=128, samples=2048):
    """Re-estimates every BatchNormalization layer's moving mean and variance
    with the model's current weights.

    Runs `x` through the model in training mode (as `fit` does, Dropout
    included) and sets each layer's moving statistics to the mean of the
    batch statistics it sees. Call it after training (and before `slim` or
    an export) when channels were removed during training; it costs one
    forward pass over `samples` inputs.

    ```python
    model.fit(x, y, epochs=30, callbacks=[keras_dstee.DSTEE(sparsity=0.9, channel_sparsity=0.5)])
    keras_dstee.recalibrate_batch_norm(model, x)
    ```

    Args:
        model: a built Keras model of any kind.
        x: training inputs: a NumPy array (samples on the first axis; a list
            of arrays for several inputs), or a `tf.data.Dataset` or
            generator yielding `x` or `(x, y)`, batched or not.
        batch_size: samples per batch; statistics are per batch, as in
            training, so use the training batch size.
        samples: how many samples of `x` to use (whole batches of them).

    Returns:
        A dict: `layers` (names of the layers updated) and `batches`.
        Layers with `trainable=False` keep their statistics, as in `fit`.
    """
    arguments.keras_model(model, "recalibrate_batch_norm")
    layers = _batch_norm_layers(model)
    # Batch statistics need 2 samples.
    batch_size = arguments.integer("batch_size", batch_size, 2)
    samples = arguments.integer("samples", samples, 2)
    inputs = calibration.calibration_samples(x, calibration.input_shapes(model), limit=samples, argument="x")
    count = len(inputs[0])
    if count < 2:
        raise ValueError(f"`x` holds {count} sample(s); batch statistics need at least 2.")
    batches = max(1, count // batch_size)
    saved = [(layer, layer.momentum, [np.array(v) for v in _statistics(layer)]) for layer in layers]
    try:
        with _no_gradients():
            for i in range(batches):
                # Momentum i / (i + 1): the moving statistics become the plain
                # mean of the batches so far, the first replacing the old.
                for layer in layers:
                    layer.momentum = i / (i + 1)
                chunk = [a[i * batch_size : (i + 1) * batch_size] for a in inputs]
                model(chunk if len(chunk) > 1 else chunk[0], training=True)
    except Exception:
        for layer, _, values in saved:
            for variable, value in zip(_statistics(layer), values):
                variable.assign(value)
        raise
    finally:
        for layer, momentum, _ in saved:
            layer.momentum = momentum
    return {"layers": [layer.name for layer in layers], "batches": batches}


def _batch_norm_layers(model):
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            "`recalibrate_batch_norm` needs a built Keras model: train it (or call it on a batch) first."
        )
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no trainable BatchNormalization layer: there are no statistics to "
            "recalibrate."
        )
    return layers


def _statistics(layer):
    return [v for v in (layer.moving_mean, layer.moving_variance, getattr(layer, "moving_stddev", None)) if v is not None]


def _no_gradients():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
