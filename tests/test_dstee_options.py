"""DST-EE's formulation options: what `N` counts, the bonus's scale against
the gradient term, and a bonus that decays; none changes
`DSTEE(exploration=0) == RigL`."""

import math

import keras
import numpy as np
import pytest
from helpers import EveryStep
from helpers import assert_budget
from helpers import compile_model
from helpers import small_cnn
from helpers import sparse_optimizer
from helpers import to_numpy

import keras_dstee
from keras_dstee.training import methods


def _fit(data, callback, epochs=2):
    model = compile_model(small_cnn())
    model.fit(*data, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[callback, EveryStep(lambda m, _: assert_budget(m))])
    return model


@pytest.mark.parametrize(
    "settings",
    [
        {"count": "periods"},
        {"bonus_decay": "cosine"},
        {"normalize_gradients": False},
        {"count": "periods", "bonus_decay": "cosine", "normalize_gradients": False},
    ],
    ids=["periods", "cosine", "raw_gradient", "all"],
)
def test_without_exploration_every_option_is_rigl(data, settings):
    dstee = _fit(data, keras_dstee.DSTEE(update_freq=2, seed=5, exploration=0.0, **settings))
    rigl = _fit(data, keras_dstee.RigL(update_freq=2, seed=5))
    for a, b in zip(sparse_optimizer(dstee).kernels, sparse_optimizer(rigl).kernels):
        np.testing.assert_array_equal(to_numpy(a.mask), to_numpy(b.mask))
    for a, b in zip(dstee.weights, rigl.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("count", ["steps", "periods"])
def test_what_the_counter_counts(data, count):
    """A position active since the start and never dropped has been active
    for `last_update` steps, through `last_update / update_freq` periods."""
    model = _fit(data, keras_dstee.DSTEE(sparsity=0.5, update_freq=2, seed=1, count=count))
    optimizer = sparse_optimizer(model)
    last = int(to_numpy(optimizer.last_update))
    assert last > 0
    expected = last if count == "steps" else last // 2
    for k in optimizer.kernels:
        counter = to_numpy(k.counter)
        assert counter.max() == expected
        # Counts are whole periods or steps.
        np.testing.assert_array_equal(counter, np.round(counter))


def test_cosine_decay_scales_the_bonus():
    rng = np.random.default_rng(0)
    grad = keras.ops.convert_to_tensor(rng.normal(size=(6, 5)).astype("float32"))
    counter = keras.ops.convert_to_tensor(rng.integers(0, 4, size=(6, 5)).astype("float32"))
    step = keras.ops.convert_to_tensor(50)
    plain = methods.DSTEE(exploration=1.5)
    decaying = methods.DSTEE(exploration=1.5, bonus_decay="cosine")
    magnitude = np.abs(to_numpy(grad))
    gradient_term = magnitude / magnitude.mean()
    bonus = to_numpy(plain.grow_scores(None, grad, counter, step, 0)) - gradient_term
    for progress in (0.0, 0.25, 1.0):
        scores = to_numpy(decaying.grow_scores(None, grad, counter, step, 0, progress=keras.ops.convert_to_tensor(progress)))
        factor = 0.5 * (1 + math.cos(math.pi * progress))
        np.testing.assert_allclose(scores, gradient_term + factor * bonus, rtol=1e-5, atol=1e-6)


def test_options_are_checked_and_saved(data, tmp_path):
    with pytest.raises(ValueError, match="count"):
        keras_dstee.DSTEE(count="epochs")
    with pytest.raises(ValueError, match="bonus_decay"):
        methods.DSTEE(bonus_decay="linear")
    model = _fit(data, keras_dstee.DSTEE(update_freq=2, seed=1, count="periods", bonus_decay="cosine"), epochs=1)
    model.save(tmp_path / "m.keras")
    loaded = sparse_optimizer(keras.saving.load_model(tmp_path / "m.keras")).method
    assert loaded == methods.DSTEE(count="periods", bonus_decay="cosine")
    assert methods.DSTEE() == methods.DSTEE(count="steps", bonus_decay="none")
