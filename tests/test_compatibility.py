"""Releases stay compatible. A `.keras` file written by release 0.1 (method
as a string, DST-EE's settings on the optimizer config, densities by
position with 1.0 for every dense variable) loads with its sparse state and
resumes as 0.1 resumed it (`tests/data/make_v0_1_checkpoint.py`). Every
method trains the masks 0.2.0 trained, bit for bit, for the same seed
(`tests/data/make_v0_2_reference.py`). Runs with `channel_sparsity` changed
on purpose after 0.2.0 (CHANGELOG, "Channel sparsity could kill a deep
network"): a 0.2.0 file with channel state loads and resumes with its
removed channels, within its budget."""

import os
import sys

import keras
import numpy as np
import pytest
from helpers import assert_budget

import keras_dstee

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "data"))
import make_v0_1_checkpoint as v0_1  # noqa: E402
import make_v0_2_reference as v0_2  # noqa: E402

sys.path.pop(0)

BACKEND = keras.backend.backend()


def test_a_0_1_checkpoint_loads_with_its_sparse_state():
    model = keras.saving.load_model(v0_1.CHECKPOINT)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras_dstee.SparseOptimizer)
    assert optimizer.method == keras_dstee.methods.DSTEE(exploration=1.0, epsilon=1.0)
    assert int(keras.ops.convert_to_numpy(optimizer.step)) == 8
    # Only the kernels are in the budget, not the biases listed at 1.0.
    assert [tuple(v.shape) for v, _ in optimizer.budget] == [(3, 3, 3, 8), (288, 16), (16, 5)]
    assert_budget(model)


def test_a_0_1_checkpoint_resumes_as_0_1_did():
    expected = np.load(os.path.join(HERE, "data", f"v0_1_resumed_{BACKEND}.npz"))
    model = keras.saving.load_model(v0_1.CHECKPOINT)
    v0_1.fit(model, initial_epoch=2)
    resumed = v0_1.state(model)
    assert sorted(resumed) == sorted(expected.files)
    for key in resumed:
        if key.startswith("weight_"):
            # Written on another machine: float kernels may round differently.
            np.testing.assert_allclose(resumed[key], expected[key], rtol=0, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    assert not np.array_equal(expected["mask_0"], _saved_mask(0)) or not np.array_equal(
        expected["mask_1"], _saved_mask(1)
    ), "the resumed run must update masks"


def _saved_mask(index):
    model = keras.saving.load_model(v0_1.CHECKPOINT)
    return keras.ops.convert_to_numpy(model.optimizer.kernels[index].mask)


def _assert_same_state(got, expected, prefix):
    assert sorted(got) == sorted(k for k in expected.files if k.startswith(prefix + "/"))
    for key in got:
        if "/weight_" in key:
            # Written on another machine: float kernels may round differently.
            np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5, err_msg=key)
        else:  # masks, counters, channel flags, the step: exact
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# The channel update's swap count changed after 0.2.0 (the swap fix).
CHANGED_SINCE_0_2 = {"dstee_channels", "granet_channels"}


@pytest.mark.parametrize("run", sorted(set(v0_2.RUNS) - CHANGED_SINCE_0_2))
def test_masks_are_those_0_2_0_trained(run):
    expected = np.load(os.path.join(HERE, "data", f"v0_2_reference_{BACKEND}.npz"))
    model = v0_2.model()
    v0_2.fit(model, v0_2.RUNS[run]())
    _assert_same_state(v0_2.state(model, run), expected, run)


def test_a_0_2_0_file_with_channel_state_resumes():
    expected = np.load(os.path.join(HERE, "data", f"v0_2_reference_{BACKEND}.npz"))
    model = keras.saving.load_model(v0_2.CHECKPOINT)
    assert model.optimizer.channels is not None
    alive = keras.ops.convert_to_numpy(model.optimizer.channels.alive)
    assert (alive == 0).any()
    v0_2.fit(model, v0_2.RUNS["dstee_channels"](), initial_epoch=2)
    got = v0_2.state(model, "resumed")
    np.testing.assert_array_equal(got["resumed/step"], expected["resumed/step"])
    # Removed channels never come back; as many are gone as 0.2.0 removed.
    assert np.all(got["resumed/alive"][alive == 0] == 0)
    assert got["resumed/alive"].sum() == expected["resumed/alive"].sum()
    # The kernels together hold at most their budget (a kernel may hold
    # another's share; in this small net the live area cannot hold all of
    # it, as in 0.2.0).
    kernels = model.optimizer.kernels
    assert 0 < sum(int(keras.ops.convert_to_numpy(k.mask).sum()) for k in kernels) <= sum(k.active for k in kernels)


@pytest.fixture(autouse=True)
def _fresh_names():
    keras.backend.clear_session()
