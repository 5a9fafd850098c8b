"""Layer densities: uniform, ER, ERK, and the exact global budget."""

import math

import keras
import pytest

import keras_dstee
from keras_dstee.distributions import active_count
from keras_dstee.distributions import kernel_densities

SHAPES = [(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128), (1, 1, 64, 128), (2048, 10)]


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_erk_matches_formula_and_budget(sparsity):
    densities = kernel_densities(SHAPES, sparsity, "erk")
    sizes = [math.prod(s) for s in SHAPES]
    raw = [sum(s) / math.prod(s) for s in SHAPES]
    sparse = [i for i, d in enumerate(densities) if d < 1]
    # One scale for every kernel that is not dense.
    scales = {densities[i] / raw[i] for i in sparse}
    assert max(scales) == pytest.approx(min(scales))
    # A kernel is dense only where the formula would exceed 1.
    scale = scales.pop()
    for i, d in enumerate(densities):
        assert d == 1.0 if scale * raw[i] >= 1 else d == pytest.approx(scale * raw[i])
    kept = sum(active_count(s, d) for s, d in zip(SHAPES, densities))
    target = (1 - sparsity) * sum(sizes)
    assert abs(kept - target) <= len(SHAPES)


def test_erk_makes_small_layer_dense_and_resolves():
    densities = kernel_densities(SHAPES, 0.5, "erk")
    assert densities[0] == 1.0  # the 3x3x3x64 stem
    kept = sum(d * math.prod(s) for s, d in zip(SHAPES, densities))
    assert kept == pytest.approx(0.5 * sum(math.prod(s) for s in SHAPES))


def test_er_and_uniform():
    er = kernel_densities(SHAPES, 0.9, "er")
    ratios = {d / ((s[-2] + s[-1]) / (s[-2] * s[-1])) for s, d in zip(SHAPES, er) if d < 1}
    assert max(ratios) == pytest.approx(min(ratios))
    assert kernel_densities(SHAPES, 0.9, "uniform") == pytest.approx([0.1] * len(SHAPES))


def test_every_kernel_keeps_one_weight():
    assert active_count((3, 3), 1e-9) == 1
    assert active_count((3, 3), 1.0) == 9


def test_layer_densities_by_path():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3), keras.layers.BatchNormalization(),
         keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    densities = keras_dstee.layer_densities(model, 0.8)
    assert sorted(densities) == sorted(
        [model.layers[0].kernel.path, model.layers[3].kernel.path]
    )
