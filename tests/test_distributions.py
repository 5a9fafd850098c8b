"""Layer densities: uniform, ER, ERK, and the exact global budget."""

import math

import keras
import pytest

import keras_dstee
from keras_dstee.training.distributions import active_count
from keras_dstee.training.distributions import kernel_densities

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


@pytest.mark.parametrize("power", [0.0, 0.5, 2.0])
def test_erk_power_scale(power):
    densities = kernel_densities(SHAPES, 0.9, "erk", erk_power_scale=power)
    sizes = [math.prod(s) for s in SHAPES]
    # RigL's form: raw densities (sum(shape) / size) ** power, one scale.
    raw = [(sum(s) / math.prod(s)) ** power for s in SHAPES]
    sparse = [i for i, d in enumerate(densities) if d < 1]
    scales = {round(densities[i] / raw[i], 12) for i in sparse}
    assert len(scales) == 1
    assert sum(d * n for d, n in zip(densities, sizes)) == pytest.approx(0.1 * sum(sizes))
    if power == 0.0:
        assert densities == pytest.approx(kernel_densities(SHAPES, 0.9, "uniform"))
    assert kernel_densities(SHAPES, 0.9, "erk", erk_power_scale=1.0) == kernel_densities(SHAPES, 0.9, "erk")


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


def _cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="stem"), keras.layers.Conv2D(8, 3, name="body"),
         keras.layers.Flatten(), keras.layers.Dense(16, name="fc1"), keras.layers.Dense(4, name="head")]
    )


def test_sparsity_map_by_name_and_regex():
    model = _cnn()
    densities = keras_dstee.layer_densities(model, 0.9, {"body": 0.5, "fc.*": 0.75})
    by_layer = {path.split("/")[-2]: d for path, d in densities.items()}
    assert by_layer == {"body": 0.5, "fc1": 0.25}  # stem and head unmatched: dense


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"nope": 0.5}, "matches no layer.*body.*fc1.*head.*stem"),
        ({"body": 1.0}, r"must be a number in \[0, 1\)"),
        ({"body": 0.0}, "no prunable kernel left"),
        ({keras.layers.Dense: 0.5}, "layer names or regular expressions"),
    ],
)
def test_bad_sparsity_maps(mapping, message):
    with pytest.raises(ValueError, match=message):
        keras_dstee.layer_densities(_cnn(), 0.9, mapping)


def test_dense_first_and_last():
    model = _cnn()
    paths = set(keras_dstee.layer_densities(model, 0.9, "uniform", dense_first=True, dense_last=True))
    assert {p.split("/")[-2] for p in paths} == {"body", "fc1"}
    with pytest.raises(ValueError, match="matches no layer"):
        keras_dstee.layer_densities(model, 0.9, exclude=["missing"])
