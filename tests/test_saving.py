"""Sparse state survives `.keras` files, checkpoints and interrupted runs."""

import glob
import os

import keras
import numpy as np
import pytest
from helpers import assert_budget
from helpers import compile_model
from helpers import small_cnn
from helpers import to_numpy

import keras_dstee

EPOCHS = 4  # 8 steps an epoch; updates every 3 steps until step 24.


def _callback():
    return keras_dstee.DSTEE(sparsity=0.8, update_freq=3, seed=1)


def _fit(model, data, callbacks, **kwargs):
    x, y = data
    kwargs.setdefault("epochs", EPOCHS)
    return model.fit(x, y, batch_size=32, verbose=0, shuffle=False, callbacks=callbacks, **kwargs)


class StopAfter(keras.callbacks.Callback):
    """Ends training (cleanly, or by raising) after a given global batch."""

    def __init__(self, batches, crash=False):
        super().__init__()
        self.batches, self.crash, self.seen = batches, crash, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            if self.crash:
                raise RuntimeError("simulated crash")
            self.model.stop_training = True


def _assert_same_state(a, b):
    for x, y in zip(a.optimizer.kernels, b.optimizer.kernels):
        np.testing.assert_array_equal(to_numpy(x.mask), to_numpy(y.mask))
        np.testing.assert_array_equal(to_numpy(x.counter), to_numpy(y.counter))
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


@pytest.fixture
def uninterrupted(data):
    model = compile_model(small_cnn(seed=2))
    _fit(model, data, [_callback()])
    return model


def test_save_and_load_keep_the_sparse_state(data, tmp_path):
    model = compile_model(small_cnn(seed=2))
    _fit(model, data, [_callback()], epochs=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, keras_dstee.SparseOptimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert int(to_numpy(loaded.optimizer.step)) == 8
    assert_budget(loaded)
    for kernel in loaded.optimizer.kernels:
        assert kernel.variable.constraint is not None
    np.testing.assert_allclose(
        to_numpy(loaded(data[0][:4])), to_numpy(model(data[0][:4])), atol=1e-6
    )


@pytest.mark.parametrize("stop_epoch", [1, 2])
def test_resume_from_a_file_matches_an_uninterrupted_run(data, tmp_path, uninterrupted, stop_epoch):
    # Stop after 8 or 16 steps (not multiples of update_freq=3); the rest of
    # the run crosses mask updates (steps 9, 12, ... 21).
    model = compile_model(small_cnn(seed=2))
    _fit(model, data, [_callback(), StopAfter(8 * stop_epoch)])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert int(to_numpy(loaded.optimizer.step)) == 8 * stop_epoch
    # Same `epochs` as the original run, continuing where it stopped.
    _fit(loaded, data, [_callback()], initial_epoch=stop_epoch)
    assert int(to_numpy(loaded.optimizer.step)) == 8 * EPOCHS
    _assert_same_state(uninterrupted, loaded)


def test_backup_and_restore_after_a_crash(data, tmp_path, uninterrupted):
    backup = str(tmp_path / "backup")
    model = compile_model(small_cnn(seed=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        # Crash in the middle of the third epoch.
        _fit(model, data, [_callback(), keras.callbacks.BackupAndRestore(backup), StopAfter(21, crash=True)])
    # A new process would rebuild the model the same way and call fit again.
    model = compile_model(small_cnn(seed=2))
    _fit(model, data, [_callback(), keras.callbacks.BackupAndRestore(backup)])
    _assert_same_state(uninterrupted, model)


def test_every_checkpoint_is_exactly_sparse(data, tmp_path):
    pattern = str(tmp_path / "epoch{epoch}.keras")
    model = compile_model(small_cnn(seed=2))
    _fit(model, data, [_callback(), keras.callbacks.ModelCheckpoint(pattern)])
    paths = sorted(glob.glob(str(tmp_path / "epoch*.keras")))
    assert len(paths) == EPOCHS
    for path in paths:
        loaded = keras.saving.load_model(path)
        assert_budget(loaded)
    weights_path = str(tmp_path / "w.weights.h5")
    model.save_weights(weights_path)
    assert os.path.getsize(weights_path) > 0
