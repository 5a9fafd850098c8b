"""`slim(model)`: the same network with its removed channels physically gone.

A channel of a removable group (`keras_dstee.channel_groups`) is gone when
its output is exactly 0 (every kernel and bias slice producing it, and the
scale and shift of the per-channel layers after it, are 0) or when nothing
reads it (every consumer slice is 0). Such a channel changes no output, so
the smaller model built without it computes the same function: kernels,
biases, BatchNormalization statistics and depthwise kernels are sliced, and
the weights that stay keep their zeros.
"""

import keras
import numpy as np

from keras_dstee import channels

# The config key that sets a producing layer's number of output channels.
WIDTH_KEYS = {
    keras.layers.Dense: "units",
    keras.layers.Conv1D: "filters",
    keras.layers.Conv2D: "filters",
    keras.layers.Conv3D: "filters",
    keras.layers.Conv1DTranspose: "filters",
    keras.layers.Conv2DTranspose: "filters",
    keras.layers.Conv3DTranspose: "filters",
    keras.layers.SeparableConv1D: "filters",
    keras.layers.SeparableConv2D: "filters",
}
# Per-channel statistics: they do not decide whether a channel outputs 0.
STATISTICS = ("moving_mean", "moving_variance")


def gone_channels(group):
    """The channels of `group` that change no output: silent or unread."""
    if not group.removable:
        return []
    speaking = np.zeros(group.size, bool)
    for s in group.producers + [f for f in group.followers if f.variable.name not in STATISTICS]:
        speaking |= channels.nonzero_channels(s)
    read = np.zeros(group.size, bool)
    for s in group.consumers:
        read |= channels.nonzero_channels(s)
    unread = ~read if group.consumers else np.zeros(group.size, bool)
    return [int(c) for c in np.flatnonzero(~speaking | unread)]


def _width_key(layer):
    for cls, key in WIDTH_KEYS.items():
        if type(layer) is cls:
            return key
    return None


def slim(model):
    """A new model of the same kind with the removed and dead channels gone.

    Its outputs equal `model`'s in inference mode (up to float rounding);
    it holds no keras_dstee state, so it saves and loads as a plain `.keras`
    file, trains on with `fit` once compiled, and exports like any model.

    Args:
        model: a built Functional or Sequential model, trained sparse or
            not. Channels are removed where `channel_groups` finds them
            removable and they change no output (all their weights 0, or
            nothing reads them); a layer keeps at least one channel.

    Returns:
        The slimmed model (uncompiled). `model` itself is not changed.
    """
    channels.check_graph_model(model, "slim")
    cut, widths = {}, {}  # id(variable) -> {axis: positions}; layer name -> output channels
    for group in channels.channel_groups(model):
        gone = gone_channels(group)
        if len(gone) == group.size:
            gone = gone[1:]  # a layer keeps one channel; it outputs 0 or is unread
        if not gone or any(_width_key(_layer(model, s.layer)) is None for s in group.producers):
            continue
        for s in group.producers + group.followers + group.consumers:
            axes = cut.setdefault(id(s.variable), {})
            axis = s.axis % len(s.variable.shape)
            axes.setdefault(axis, set()).update(int(p) for c in gone for p in s.positions[c])
        for s in group.producers:
            if s.variable.name in ("kernel", "pointwise_kernel"):
                widths[s.layer] = s.variable.shape[s.axis] - len(cut[id(s.variable)][s.axis % len(s.variable.shape)])

    def narrower(layer):
        config = layer.get_config()
        if layer.name in widths:
            config[_width_key(layer)] = widths[layer.name]
        return type(layer).from_config(config)

    # Keras compiles a clone like its source: here that would attach the
    # source's SparseOptimizer (and its masks) to the smaller model.
    compiled = [m for m in [model, *model._flatten_layers(recursive=True)] if getattr(m, "compiled", False)]
    for m in compiled:
        m.compiled = False
    try:
        slimmed = keras.models.clone_model(model, clone_function=narrower, recursive=True)
    finally:
        for m in compiled:
            m.compiled = True
    old_layers = list(model._flatten_layers(include_self=False, recursive=True))
    new_layers = list(slimmed._flatten_layers(include_self=False, recursive=True))
    for old, new in zip(old_layers, new_layers):
        for old_weight, new_weight in zip(old.weights, new.weights):
            value = keras.ops.convert_to_numpy(old_weight)
            for axis, positions in cut.get(id(old_weight), {}).items():
                value = np.delete(value, sorted(positions), axis=axis)
            new_weight.assign(value)
    return slimmed


def _layer(model, name):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == name:
            return layer
    raise KeyError(name)
