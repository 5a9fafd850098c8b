"""`slim(model)`: the same network with its removed channels physically gone.

A channel of a removable group (`keras_dstee.channel_groups`) is gone when
its output is exactly 0 (every kernel and bias slice producing it, and the
scale and shift of the per-channel layers after it, are 0) or when nothing
reads it (every consumer slice is 0). Such a channel changes no output, so
the smaller model built without it computes the same function: kernels,
biases, BatchNormalization statistics and depthwise kernels are sliced, and
the weights that stay keep their zeros. A block-sparse Dense kernel (trained
with `block_size`) loses whole aligned blocks of channels only, so it stays
block-sparse: cutting inside a block would split every block it touches
(a 98 %-sparse (16, 1)-block MLP's int8 file grew from 131 to 161 KB:
`benchmarks/slim_blocks.py`).
"""

import keras
import numpy as np

from keras_dstee import host
from keras_dstee import layer_kinds
from keras_dstee.structure import channels
from keras_dstee.structure import liveness
from keras_dstee.structure import rebuilding

# Block lengths looked for along a Dense kernel's channel axis, longest
# first: TFLite's int8 sparse kernel needs 16, its float one 4.
BLOCK_LENGTHS = (16, 8, 4, 2)
# At most this fraction of a block-sparse kernel's nonzero blocks has zeros
# inside (see `block_length`).
MOSTLY_WHOLE = 0.5
# TFLite's converter stores a weight sparse from this fraction of zeros on.
SPARSE_STORAGE = 0.3


def block_length(slice_):
    """The length of the aligned blocks along the slice's axis in which a
    2-D kernel with at least 30 % zeros (a layer trained with `block_size`)
    keeps its weights; 1 if none. Most nonzero blocks must be whole, not
    all: a weight grown on a unit that outputs 0 stays exactly 0 (its
    gradient is 0). Measured: 13-30 % of a trained 98 %-sparse (16, 1)-block
    MLP's nonzero blocks have zeros inside; unstructured zeros, 95-100 %."""
    if slice_.variable.name != "kernel" or len(slice_.variable.shape) != 2:
        return 1
    nonzero = np.moveaxis(host.to_numpy(slice_.variable) != 0, slice_.axis % 2, 0)
    if nonzero.mean() > 1 - SPARSE_STORAGE or not nonzero.any():
        return 1  # TFLite stores it dense: no blocks to keep
    for length in BLOCK_LENGTHS:
        if nonzero.shape[0] % length == 0:
            blocks = nonzero.reshape(-1, length, nonzero.shape[1])
            live, full = blocks.any(axis=1), blocks.all(axis=1)
            if (live & ~full).sum() <= MOSTLY_WHOLE * live.sum():
                return length
    return 1


def whole_blocks(group, gone):
    """The channels of `gone` whose every block, in every block-sparse
    kernel of the group, is gone entirely: cutting those keeps the other
    blocks aligned."""
    gone_set, kept = set(gone), set()
    for s in group.producers + group.consumers:
        length = block_length(s)
        if length == 1:
            continue
        owner = {p: c for c, positions in enumerate(s.positions) for p in positions}
        for c in gone:
            for p in s.positions[c]:
                block = range(p - p % length, p - p % length + length)
                if any(owner.get(q) not in gone_set for q in block):
                    kept.add(c)
    return [c for c in gone if c not in kept]


def slim(model):
    """A new model of the same kind with the removed and dead channels gone.

    Its outputs equal `model`'s in inference mode (up to float rounding);
    it holds no keras_dstee state, so it saves and loads as a plain `.keras`
    file, trains on with `fit` once compiled, and exports like any model.

    Args:
        model: a built Functional or Sequential model, trained sparse or
            not. Channels are removed where `channel_groups` finds them
            removable and they change no output (all their weights 0, or
            nothing reads them), a whole aligned block at a time where a
            block-sparse Dense kernel reads or makes them; a layer keeps at
            least one channel.

    Returns:
        The slimmed model (uncompiled). `model` itself is not changed.
    """
    channels.check_graph_model(model, "slim")
    removed = []
    for group in channels.channel_groups(model):
        gone = whole_blocks(group, liveness.gone_channels(group))
        if len(gone) == group.size:
            gone = gone[1:]  # a layer keeps one channel; it outputs 0 or is unread
        if not gone or any(layer_kinds.width_key(_layer(model, s.layer)) is None for s in group.producers):
            continue
        removed.append((group, gone))
    # id(variable) -> {axis: positions}; layer name -> output channels
    cut, widths = rebuilding.channel_cut(removed)

    def narrower(layer):
        config = layer.get_config()
        if layer.name in widths:
            config[layer_kinds.width_key(layer)] = widths[layer.name]
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
            new_weight.assign(rebuilding.sliced(keras.ops.convert_to_numpy(old_weight), cut.get(id(old_weight), {})))
    return slimmed


def _layer(model, name):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == name:
            return layer
    raise KeyError(name)
