"""Multiply-adds of a model's conv and dense layers (inference, one
example): per layer call for `summary`, and for the whole graph from the
shapes it records, which `shrink` keeps current (no forward pass)."""

import math
import re

import keras

from keras_dstee.layers import layer_prunable_weights


def _einsum_macs(equation, in_shape, kernel_shape, out_shape):
    match = re.fullmatch(r"(\w+),(\w+)->(\w+)", equation.replace(" ", ""))
    if match is None:
        return None
    sizes = {}
    for subscripts, shape in zip(match.groups(), (in_shape, kernel_shape, out_shape)):
        sizes.update(zip(subscripts, shape))
    return math.prod(sizes.values())


def macs(layer, variable, in_shape, out_shape):
    """Multiply-adds of one call of `layer` for `variable`, batch 1."""
    kernel = tuple(variable.shape)
    size = math.prod(kernel)
    if isinstance(layer, keras.layers.Embedding):
        return 0
    if isinstance(layer, keras.layers.EinsumDense):
        macs = _einsum_macs(layer.equation, in_shape, kernel, out_shape)
        if macs is not None:
            return macs
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        positions = math.prod(out_shape[1:]) // layer.filters
        return size * positions
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return size * math.prod(out_shape[1:]) // (kernel[-2] * kernel[-1])
    if isinstance(
        layer,
        (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose),
    ):
        return size * math.prod(in_shape[1:]) // kernel[-1]
    # Dense, Conv and custom kernels whose last axis is the output features.
    return size * math.prod(out_shape[1:]) // kernel[-1]


def dense_macs(model):
    """Multiply-adds of one example through every prunable kernel of
    `model` at full density, read from the shapes of its (Functional or
    Sequential) graph: what one training example costs the network's
    width, the figure shrinking lowers."""
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        variables = layer_prunable_weights(layer)
        if not variables:
            continue
        for node in layer._inbound_nodes:
            if not node.input_tensors or not node.outputs:
                continue
            in_shape = (1,) + tuple(node.input_tensors[0].shape[1:])
            out_shape = (1,) + tuple(node.outputs[0].shape[1:])
            if None in in_shape or None in out_shape:
                continue
            total += sum(macs(layer, v, in_shape, out_shape) for v in variables)
    return total
