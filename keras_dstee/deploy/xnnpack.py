"""Whether a conv net can run sparse on XNNPACK (ARM phones), checked in
Keras terms before training.

XNNPACK runs sparse 1x1 convolutions faster than dense only inside a
MobileNet-style subgraph (its README's "sparse inference"; tfmot's
`PruneForLatencyOnXNNPack` lists the same conditions): it starts at a 3x3
stride-2 convolution of the 3-channel input after an explicit symmetric
`ZeroPadding2D(1)`, contains only 1x1 convolutions, depthwise convolutions
and element-wise layers, ends at a `GlobalAveragePooling2D(keepdims=True)`,
and more than 2/3 of its 1x1 weights are zero. XNNPACK switches the sparse
path off on x86 CPUs, so on a desktop a sparse conv net is smaller, not
faster.
"""

import platform

import keras
import numpy as np

_ELEMENTWISE = (
    keras.layers.Add,
    keras.layers.Multiply,
    keras.layers.ZeroPadding2D,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
)
_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid")


def _producers(layer):
    return [parent.operation for node in layer._inbound_nodes for parent in node.parent_nodes]


def _consumers(layer):
    return [node.operation for node in layer._outbound_nodes]


def _padding_of(layer, amount):
    producers = _producers(layer)
    return (
        len(producers) == 1
        and isinstance(producers[0], keras.layers.ZeroPadding2D)
        and tuple(map(tuple, producers[0].padding)) == ((amount, amount), (amount, amount))
    )


def _is_stem(layer):
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel.shape[:3]) == (3, 3, 3)
        and tuple(layer.strides) == (2, 2)
        and layer.padding == "valid"
        and _padding_of(layer, 1)
    )


def _is_end(layer):
    return isinstance(layer, keras.layers.GlobalAveragePooling2D) and layer.keepdims


def _is_1x1(layer):
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    )


def _unsupported(layer):
    """Why XNNPACK's sparse subgraph cannot contain `layer`, or None."""
    if isinstance(layer, _ELEMENTWISE) or _is_1x1(layer):
        return None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        size, strides = tuple(layer.kernel_size), tuple(layer.strides)
        ok = layer.depth_multiplier == 1 and tuple(layer.dilation_rate) == (1, 1)
        ok = ok and (
            (size in ((3, 3), (5, 5)) and strides == (1, 1) and layer.padding == "same")
            or (size == (3, 3) and strides == (2, 2) and layer.padding == "valid" and _padding_of(layer, 1))
            or (size == (5, 5) and strides == (2, 2) and layer.padding == "valid" and _padding_of(layer, 2))
        )
        return None if ok else "a depthwise conv other than 3x3/5x5, stride 1 'same' or stride 2 after ZeroPadding2D"
    if isinstance(layer, keras.layers.BatchNormalization):
        return None if layer.axis in (-1, 3) else "BatchNormalization not on the channel axis"
    if isinstance(layer, keras.layers.UpSampling2D):
        return None if layer.interpolation == "bilinear" else "UpSampling2D that is not bilinear"
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", name)
        return None if name in _ACTIVATIONS else f"activation {name!r}"
    if type(layer) is keras.layers.Conv2D:
        return "a Conv2D that is not 1x1, stride 1, undilated"
    return f"a {type(layer).__name__} layer"


def _walk(starts, stop, step):
    """Layers reachable from `starts` through `step` until `stop` holds;
    returns (the stopping layers, whether every path reached one)."""
    found, seen, todo = [], {id(s) for s in starts}, list(starts)
    complete = True
    while todo:
        layer = todo.pop()
        if stop(layer):
            found.append(layer)
            continue
        following = step(layer)
        if not following:
            complete = False
        for nxt in following:
            if id(nxt) not in seen:
                seen.add(id(nxt))
                todo.append(nxt)
    return found, complete


def xnnpack_sparse_check(model):
    """Whether `model` meets XNNPACK's conditions for sparse conv inference.

    Call it before training to know whether sparsity will buy speed on ARM
    (phones); on x86 desktops XNNPACK never takes the sparse path.

    Args:
        model: a built functional or `Sequential` Keras model.

    Returns:
        A dict: `eligible` (the graph's structure qualifies), `problems`
        (what does not, in Keras terms), `sparse_layers` (the 1x1 `Conv2D`
        layers XNNPACK would run sparse: train those sparse),
        `zero_fraction_1x1` (their current fraction of zero weights; XNNPACK
        needs more than 2/3), and `this_machine` (whether this CPU could run
        it sparse at all).
    """
    problems = []
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        problems.append("not a functional or Sequential model with known inputs and outputs")
        stems, ends = [], []
    else:
        inputs = [t._keras_history.operation for t in model.inputs]
        outputs = [t._keras_history.operation for t in model.outputs]
        stems, complete = _walk(inputs, _is_stem, _consumers)
        if not stems or not complete:
            problems.append(
                "every input must reach a 3x3 stride-2 'valid' Conv2D of the 3-channel "
                "input right after ZeroPadding2D(1) (the stem)"
            )
        ends, complete = _walk(outputs, _is_end, _producers)
        if not ends or not complete:
            problems.append("every output must come after a GlobalAveragePooling2D(keepdims=True)")
        if stems and ends:
            for layer in _between(stems, ends):
                reason = _unsupported(layer)
                if reason:
                    problems.append(f"{layer.name}: {reason}")
    sparse_layers = [layer for layer in _between(stems, ends) if _is_1x1(layer)] if not problems else []
    weights = [keras.ops.convert_to_numpy(layer.kernel) for layer in sparse_layers]
    total = sum(w.size for w in weights)
    zero_fraction = sum(int(np.sum(w == 0)) for w in weights) / total if total else 0.0
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    return {
        "eligible": not problems,
        "problems": problems,
        "sparse_layers": [layer.name for layer in sparse_layers],
        "zero_fraction_1x1": zero_fraction,
        "this_machine": (
            f"{machine}: XNNPACK's sparse path is off on x86 CPUs, so sparsity saves size here, not time"
            if x86
            else f"{machine}: XNNPACK can take its sparse path here"
        ),
    }


def _between(stems, ends):
    """The layers after the stems, up to and excluding the ends."""
    end_ids = {id(e) for e in ends}
    order, seen = [], set()
    todo = [c for s in stems for c in _consumers(s)]
    while todo:
        layer = todo.pop(0)
        if id(layer) in seen or id(layer) in end_ids:
            continue
        seen.add(id(layer))
        order.append(layer)
        todo.extend(_consumers(layer))
    return order
