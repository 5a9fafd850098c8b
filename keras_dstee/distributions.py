"""How a global sparsity is split across kernels: uniform, ER and ERK."""

import math

DISTRIBUTIONS = ("erk", "er", "uniform")


def _raw_density(shape, distribution):
    """The unnormalised density ER/ERK give a kernel of `shape`."""
    if distribution == "erk":
        # Erdos-Renyi-Kernel: every dimension counts (kernel size too).
        return sum(shape) / math.prod(shape)
    # Erdos-Renyi: fan-in and fan-out only.
    fan_in, fan_out = shape[-2], shape[-1]
    return (fan_in + fan_out) / (fan_in * fan_out)


def kernel_densities(shapes, sparsity, distribution="erk"):
    """Densities (fraction of weights kept) for kernels of the given shapes.

    The number of kept weights over all kernels is `(1 - sparsity)` of their
    total size, up to rounding per kernel. Under ER/ERK, a kernel whose density
    would exceed 1 becomes dense and the others are re-solved, so the global
    budget still holds.

    Args:
        shapes: list of kernel shapes (tuples of ints).
        sparsity: float in [0, 1), the global fraction of zeros.
        distribution: `"erk"`, `"er"` or `"uniform"`.

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
    raw = [_raw_density(s, distribution) for s in shapes]
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
    model, sparsity, distribution="erk", exclude=None, include_embeddings=False
):
    """The density of every prunable kernel of `model`, by variable path.

    Args:
        model: a built `keras.Model`.
        sparsity: float in [0, 1), the fraction of zeros over all prunable
            kernels.
        distribution: `"erk"`, `"er"` or `"uniform"`.
        exclude: layer names, regexes or classes whose weights stay dense.
        include_embeddings: whether `Embedding` tables are pruned too.

    Returns:
        A dict `{variable.path: density}` to give to `SparseOptimizer`.
    """
    from keras_dstee.layers import prunable_variables

    if not model.built:
        raise ValueError(
            "The model is not built yet, so its kernels don't exist: call it "
            "on a batch or `model.build(input_shape)` first."
        )
    variables = prunable_variables(model, include_embeddings, exclude)
    if not variables:
        raise ValueError(
            f"Model {model.name!r} has no prunable kernel (Dense, EinsumDense, "
            "Conv*, DepthwiseConv*, SeparableConv*, or a layer defining "
            "`get_prunable_weights()`) that is trainable and not excluded."
        )
    shapes = [tuple(v.shape) for v in variables]
    densities = kernel_densities(shapes, sparsity, distribution)
    return {v.path: d for v, d in zip(variables, densities)}
