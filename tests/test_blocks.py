"""Block sparsity: masks change in whole blocks for every method, budgets
are exact in blocks, and a block's scores are the sums of its positions'."""

import math
import warnings

import keras
import numpy as np
import pytest
from helpers import EveryStep
from helpers import compile_model
from helpers import sparse_optimizer
from helpers import to_numpy

import keras_dstee
from keras_dstee.training import schedule

BLOCK = (4, 1)


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3),  # 3 input channels: not divisible by 4
            keras.layers.Conv2D(8, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(5),
        ]
    )


def block_grid(mask, block):
    """The mask on its grid of blocks; fails unless constant in each block."""
    shape = mask.shape
    split = mask.reshape(shape[:-2] + (shape[-2] // block[0], block[0], shape[-1] // block[1], block[1]))
    low, high = split.min(axis=(-3, -1)), split.max(axis=(-3, -1))
    np.testing.assert_array_equal(low, high)
    return low


class BlockCheck(EveryStep):
    """After every step: masks constant in every block, whole blocks active,
    no weight outside the mask; records the masks."""

    def __init__(self):
        self.masks = []
        super().__init__(self._check)

    def _check(self, model, batch):
        optimizer = sparse_optimizer(model)
        masks = []
        for k in optimizer.kernels:
            mask = to_numpy(k.mask)
            weight = to_numpy(k.variable)
            assert np.count_nonzero(weight[mask == 0]) == 0
            if k.block is not None:
                grid = block_grid(mask, k.block)
                assert int(mask.sum()) == int(grid.sum()) * math.prod(k.block)
                if optimizer.method.initial_sparsity is None:
                    assert int(mask.sum()) == k.active
            masks.append(mask.copy())
        self.masks.append(masks)


@pytest.mark.parametrize("method", ["dstee", "rigl", "set", "static", "gmp", "granet"])
def test_block_masks_are_structured_and_exact_at_every_step(data, method):
    x, y = data
    model = compile_model(mlp())
    check = BlockCheck()
    callback = keras_dstee.SparseTraining(method, sparsity=0.9, block_size=BLOCK, update_freq=2, seed=3)
    with pytest.warns(UserWarning, match=r"conv2d(_\d+)?/kernel'\]: they are trained unstructured"):
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback, check])
    optimizer = sparse_optimizer(model)
    assert [k.block for k in optimizer.kernels] == [None, BLOCK, BLOCK, BLOCK]
    for k in optimizer.kernels[1:]:
        # The budget in whole blocks, from the kernel's planned density.
        assert k.active % 4 == 0
        assert int(to_numpy(k.mask).sum()) == k.active
    moved = any(not np.array_equal(a, b) for a, b in zip(check.masks[0][1:], check.masks[-1][1:]))
    assert moved == (method != "static")


def _block_sums(x, block):
    shape = x.shape
    return x.reshape(shape[:-2] + (shape[-2] // block[0], block[0], shape[-1] // block[1], block[1])).sum(axis=(-3, -1))


@pytest.mark.parametrize("method", ["rigl", "dstee"])
def test_one_update_drops_by_block_l1_and_grows_by_block_gradient(method):
    """One mask update on a 16x8 kernel against a numpy reference: drop the
    active blocks with the smallest sum |w|, grow the inactive blocks with
    the largest sum of the grow score (|g|; DST-EE adds its bonus)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, use_bias=False)])
    kernel = model.trainable_variables[0]
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(0.0),  # the weights stay as they are
        {kernel.path: 0.5},
        method=method,
        update_freq=1,
        drop_fraction=0.5,
        end_step=100,
        block_size=BLOCK,
        rescale=False,
        seed=0,
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()
    (k,) = optimizer.kernels
    mask_before = to_numpy(k.mask).copy()
    weight = to_numpy(kernel).copy()
    grad = np.random.default_rng(1).normal(size=weight.shape).astype("float32")
    optimizer.step.assign(19)  # the update at step 20: 20 steps active so far
    optimizer.apply([keras.ops.convert_to_tensor(grad)], model.trainable_variables)

    grid = block_grid(mask_before, BLOCK)
    active_blocks = int(grid.sum())
    assert active_blocks == 16  # half of the 4x8 blocks
    fraction = float(to_numpy(schedule.drop_fraction_at(20, 0, 100, 0.5)))
    count = math.ceil(fraction * active_blocks)
    keep = _block_sums(np.abs(weight), BLOCK)
    dropped = grid.copy()
    dropped.flat[np.argsort(np.where(grid > 0, keep, np.inf).ravel())[:count]] = 0
    if method == "rigl":
        score = np.abs(grad)
    else:
        # N: steps active so far (20 for the blocks active until now).
        bonus = np.sqrt(np.log(20.0) / (20.0 * mask_before + 1.0))
        score = np.abs(grad) / np.abs(grad).mean() + bonus
    scores = _block_sums(score, BLOCK)
    expected = dropped.copy()
    expected.flat[np.argsort(-np.where(dropped > 0, -np.inf, scores).ravel())[:count]] = 1
    np.testing.assert_array_equal(block_grid(to_numpy(k.mask), BLOCK), expected)
    assert not np.array_equal(expected, grid)


def test_rigl_equals_dstee_without_exploration_with_blocks(data):
    x, y = data
    results = []
    for callback in (
        keras_dstee.RigL(sparsity=0.9, block_size=BLOCK, update_freq=2, seed=5),
        keras_dstee.DSTEE(sparsity=0.9, block_size=BLOCK, update_freq=2, seed=5, exploration=0.0),
    ):
        model = compile_model(mlp())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
        results.append([to_numpy(v) for v in model.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [(4,), (0, 1), "4x1", (4.0, 1), (True, 1), 4])
def test_block_size_is_checked_at_construction(value):
    with pytest.raises(ValueError, match="block_size"):
        keras_dstee.DSTEE(block_size=value)
    with pytest.raises(ValueError, match="block_size"):
        keras_dstee.SparseOptimizer(keras.optimizers.SGD(), {}, block_size=value)


def test_blocks_are_saved_and_shown_in_the_summary(data, tmp_path):
    x, y = data
    model = compile_model(mlp())
    callback = keras_dstee.RigL(sparsity=0.9, block_size=BLOCK, update_freq=2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
        model.save(tmp_path / "m.keras")
        loaded = keras.saving.load_model(tmp_path / "m.keras")
        loaded.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[keras_dstee.RigL(sparsity=0.9, block_size=BLOCK, update_freq=2)])
    optimizer = sparse_optimizer(loaded)
    assert optimizer.block_size == BLOCK
    for k in optimizer.kernels[1:]:
        block_grid(to_numpy(k.mask), BLOCK)
        assert int(to_numpy(k.mask).sum()) == k.active
    lines = []
    report = keras_dstee.summary(loaded, print_fn=lines.append)
    assert [r["block"] for r in report["kernels"]] == [None, BLOCK, BLOCK, BLOCK]
    assert "Blocks" in lines[2]
    assert lines[4].rstrip().endswith("unstructured") and lines[5].rstrip().endswith("4x1")
