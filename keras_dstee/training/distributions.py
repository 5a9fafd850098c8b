"""How a global sparsity is split across kernels: uniform, ER and ERK."""

import math

from keras_dstee import arguments

DISTRIBUTIONS = ("erk", "er", "uniform")


def _raw_density(shape, distribution, erk_power_scale=1.0):
    """The unnormalised density ER/ERK give a kernel of `shape`."""
    if distribution == "erk":
        # Erdos-Renyi-Kernel: every dimension counts (kernel size too). The
        # power is RigL's knob: 1 is ERK, 0 makes every layer alike.
        return (sum(shape) / math.prod(shape)) ** erk_power_scale
    # Erdos-Renyi: fan-in and fan-out only.
    fan_in, fan_out = shape[-2], shape[-1]
    return (fan_in + fan_out) / (fan_in * fan_out)


def kernel_densities(shapes, sparsity, distribution="erk", erk_power_scale=1.0):
    """Densities (fraction of weights kept) for kernels of the given shapes.

    The number of kept weights over all kernels is `(1 - sparsity)` of their
    total size, up to rounding per kernel. Under ER/ERK, a kernel whose density
    would exceed 1 becomes dense and the others are re-solved, so the global
    budget still holds.

    Args:
        shapes: list of kernel shapes (tuples of ints).
        sparsity: float in [0, 1), the global fraction of zeros.
        distribution: `"erk"`, `"er"` or `"uniform"`.
        erk_power_scale: ERK's raw density `(sum(shape) / size)` is raised
            to this power (RigL's `erk_power_scale`): 1.0 is ERK, 0.0 uniform.

    Returns:
        A list of floats in (0, 1], one per shape.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown `distribution={distribution!r}`. Expected one of "
            f"{DISTRIBUTIONS}."
        )
    density = 1.0 - sparsity
    if distribution == "uniform" or sparsity == 0:
        return [density] * len(shapes)
    sizes = [math.prod(s) for s in shapes]
    raw = [_raw_density(s, distribution, erk_power_scale) for s in shapes]
    dense = set()
    while True:
        # Solve sum_l min(1, scale * raw_l) * size_l = density * sum_l size_l.
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        if divisor == 0:
            return [1.0] * len(shapes)
        scale = budget / divisor
        too_dense = {
            i for i in range(len(shapes)) if i not in dense and scale * raw[i] > 1
        }
        if not too_dense:
            return [1.0 if i in dense else scale * raw[i] for i in range(len(shapes))]
        dense |= too_dense


def active_count(shape, density):
    """How many positions a kernel of `shape` keeps at `density` (at least 1)."""
    size = math.prod(shape)
    return min(size, max(1, round(density * size)))


def layer_densities(
    model,
    sparsity,
    distribution="erk",
    exclude=None,
    include_embeddings=False,
    dense_first=False,
    dense_last=False,
    erk_power_scale=1.0,
):
    """The density of every prunable kernel of `model`, by variable path.

    Args:
        model: a built `keras.Model`.
        sparsity: float in [0, 1), the fraction of zeros over all prunable
            kernels (unused when `distribution` is a dict).
        distribution: `"erk"`, `"er"`, `"uniform"`, or a dict mapping layer
            names or regular expressions (matched against whole layer names;
            the first matching entry wins) to that layer's sparsity in [0, 1).
            With a dict, layers it does not match stay dense.
        exclude: layer names, regexes or classes whose weights stay dense.
        include_embeddings: whether `Embedding` tables are pruned too.
        dense_first: keep the first prunable layer (e.g. the stem conv) dense.
        dense_last: keep the last prunable layer (e.g. the classifier) dense.
        erk_power_scale: with `"erk"`, the power of each kernel's raw
            density (RigL's knob): 1.0 is ERK, 0.0 uniform.

    Returns:
        A dict `{variable.path: density}` to give to `SparseOptimizer`.
    """
    from keras_dstee import layers as layers_lib

    if not isinstance(distribution, dict):
        arguments.number("sparsity", sparsity, 0, 1, high_open=True)
    arguments.number("erk_power_scale", erk_power_scale, 0, math.inf, high_open=True)
    if not model.built:
        raise ValueError(
            "The model is not built yet, so its kernels don't exist: call it "
            "on a batch or `model.build(input_shape)` first."
        )
    unbuilt = layers_lib.unbuilt_prunable_layers(model)
    if unbuilt:
        raise ValueError(
            f"Model {model.name!r} is built but its layers {unbuilt} are not, so "
            "their kernels don't exist yet: a subclassed model without a "
            "`build()` method creates its layers' weights only when it is "
            "called, and `model.build(input_shape)` does not call it. Call "
            "the model on a batch first, e.g. `model(x[:1])`."
        )
    pairs = layers_lib.prunable_layer_variables(model, include_embeddings, exclude)
    ends = [p for p, keep in ((pairs[:1], dense_first), (pairs[-1:], dense_last)) if keep]
    if ends:
        dense_layers = {id(layer) for end in ends for layer, _ in end}
        pairs = [(layer, v) for layer, v in pairs if id(layer) not in dense_layers]
    if isinstance(distribution, dict):
        densities = _mapped_densities(model, pairs, distribution)
    else:
        shapes = [tuple(v.shape) for _, v in pairs]
        densities = kernel_densities(shapes, sparsity, distribution, erk_power_scale)
    result = {v.path: d for (_, v), d in zip(pairs, densities) if d is not None}
    if not result or (isinstance(distribution, dict) and all(d == 1 for d in result.values())):
        raise ValueError(
            f"Model {model.name!r} has no prunable kernel left to train sparse "
            "(Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv*, or a "
            "layer defining `get_prunable_weights()`, trainable, not excluded "
            "and, with a sparsity map, mapped to a sparsity above 0)."
        )
    return result


def _mapped_densities(model, pairs, sparsity_map):
    from keras_dstee import layers as layers_lib

    sparsity_map = arguments.sparsity_map(sparsity_map)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    layers_lib.check_patterns("distribution", list(sparsity_map), layers)
    densities = []
    for layer, _ in pairs:
        value = layers_lib.layer_sparsity(layer, sparsity_map)
        densities.append(None if value is None else 1.0 - value)
    return densities
