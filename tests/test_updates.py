"""The pure drop-and-grow functions, checked by hand and across backends."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_dstee.training import schedule
from keras_dstee.training import updates

HERE = os.path.dirname(os.path.abspath(__file__))


def test_drop_and_grow_by_hand():
    weight = np.array([0.5, -0.1, 0.0, 0.3, 0.0, -0.9, 0.0, 0.2], "float32")
    mask = np.array([1, 1, 0, 1, 0, 1, 0, 1], "float32")
    scores = np.array([0.0, 0.0, 0.7, 0.0, 0.1, 0.0, 0.4, 0.0], "float32")
    new_mask, grown = updates.drop_and_grow(np.abs(weight), mask, scores, 2, 3)
    # Drops the two smallest active |w| (positions 1 and 7), grows the two
    # best inactive scores (positions 2 and 6).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new_mask), [1, 0, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(grown), [0, 0, 1, 0, 0, 0, 1, 0])


def test_just_dropped_position_can_regrow():
    weight = np.array([0.5, -0.1, 0.0, 0.3], "float32")
    mask = np.array([1, 1, 0, 1], "float32")
    scores = np.array([0.0, 0.9, 0.2, 0.0], "float32")
    new_mask, grown = updates.drop_and_grow(np.abs(weight), mask, scores, 1, 1)
    # Position 1 is dropped, then regrown (it starts again from 0).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new_mask), mask)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(grown), [0, 1, 0, 0])


def test_zero_updates_change_nothing():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 5)).astype("float32")
    mask = (rng.random((6, 5)) < 0.4).astype("float32")
    new_mask, grown = updates.drop_and_grow(np.abs(weight), mask, rng.random((6, 5)), 0, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new_mask), mask)
    assert keras.ops.convert_to_numpy(grown).sum() == 0


def test_drop_fraction_cosine_schedule():
    value = lambda t: float(keras.ops.convert_to_numpy(schedule.drop_fraction_at(t, 100, 300, 0.3)))
    assert value(100) == pytest.approx(0.3)
    assert value(200) == pytest.approx(0.15)
    assert value(250) == pytest.approx(0.15 * (1 + math.cos(0.75 * math.pi)))
    assert value(300) == 0 and value(400) == 0


def test_grow_scores_formula():
    grad = np.array([[1e-4, -3e-4], [0.0, 2e-4]], "float32")
    counter = np.array([[0.0, 10.0], [5.0, 0.0]], "float32")
    scores = keras.ops.convert_to_numpy(updates.grow_scores(grad, counter, 50, 0.5, 1.0))
    expected = np.abs(grad) / np.abs(grad).mean() + 0.5 * np.sqrt(np.log(50) / (counter + 1))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    # exploration 0: exactly |g|, as RigL.
    plain = keras.ops.convert_to_numpy(updates.grow_scores(grad, counter, 50, 0.0, 0.0))
    np.testing.assert_array_equal(plain, np.abs(grad))


def _case(seed):
    rng = np.random.default_rng(seed)
    shape = (3, 3, 8, 16)
    # Distinct magnitudes and scores: no ties, so the result is unique.
    weight = rng.permutation(np.arange(1, 1 + np.prod(shape))).reshape(shape) / 1e3
    weight *= rng.choice([-1, 1], size=shape)
    mask = np.zeros(np.prod(shape))
    mask[rng.permutation(mask.size)[:200]] = 1
    scores = rng.permutation(np.arange(np.prod(shape))).reshape(shape) / 7.0
    return weight.astype("float32"), mask.reshape(shape).astype("float32"), scores.astype("float32")


def masks_for_cases():
    """The masks this backend computes for fixed cases (run in subprocesses)."""
    out = []
    for seed in range(3):
        weight, mask, scores = _case(seed)
        new_mask, _ = updates.drop_and_grow(np.abs(weight), mask, scores, 37, 60)
        out.append(np.flatnonzero(keras.ops.convert_to_numpy(new_mask)).tolist())
    return out


def _masks_on(backend):
    code = "import json, test_updates; print(json.dumps(test_updates.masks_for_cases()))"
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_identical_masks_on_all_backends():
    here = masks_for_cases()
    # The same result by hand, in numpy.
    for seed, indices in enumerate(here):
        weight, mask, scores = _case(seed)
        active = np.flatnonzero(mask.ravel())
        order = active[np.argsort(np.abs(weight.ravel()[active]))]
        after_drop = mask.ravel().copy()
        after_drop[order[:37]] = 0
        inactive = np.flatnonzero(after_drop == 0)
        grow = inactive[np.argsort(-scores.ravel()[inactive])[:37]]
        after_drop[grow] = 1
        assert indices == np.flatnonzero(after_drop).tolist()
    # Each backend's suite checks its own masks against numpy above; one of
    # them also compares all three directly (two subprocesses, ~20 s).
    if keras.backend.backend() == "tensorflow":
        for other in ("jax", "torch"):
            assert _masks_on(other) == here, other
