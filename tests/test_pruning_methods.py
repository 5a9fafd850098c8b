"""GMP and GraNet: the density follows the cubic schedule at every mask
update, as tfmot's `PolynomialDecay(power=3)` computes it, and ends at the
target exactly."""

import math

import keras
import numpy as np
import pytest
from helpers import EveryStep
from helpers import compile_model
from helpers import small_cnn
from helpers import sparse_optimizer
from helpers import to_numpy

import keras_dstee


def tfmot_polynomial_decay(step, initial_sparsity, final_sparsity, begin_step, end_step, power=3):
    """tfmot's `PolynomialDecay` sparsity at `step`, from its documentation:
    `final + (initial - final) * (1 - (step - begin) / (end - begin))**power`,
    the progress clipped to [0, 1]."""
    progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power


class Recorder(EveryStep):
    """Records, after every step, the step and each kernel's mask."""

    def __init__(self):
        self.rows = []
        super().__init__(self._record)

    def _record(self, model, batch):
        optimizer = sparse_optimizer(model)
        masks = [to_numpy(k.mask).copy() for k in optimizer.kernels]
        for k, mask in zip(optimizer.kernels, masks):
            assert np.count_nonzero(to_numpy(k.variable)[mask == 0]) == 0
        self.rows.append((int(to_numpy(optimizer.step)), masks))


def _train(data, callback, epochs=2):
    x, y = data
    model = compile_model(small_cnn())
    recorder = Recorder()
    history = model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0, callbacks=[callback, recorder])
    return model, recorder.rows, history.history


def test_gmp_follows_tfmots_cubic_schedule(data):
    # 16 steps; pruning from step 4 (begin 0.25) to step 12 (end 0.75).
    model, rows, history = _train(
        data, keras_dstee.GMP(sparsity=0.8, distribution="uniform", begin=0.25, end=0.75, update_freq=2, seed=0)
    )
    optimizer = sparse_optimizer(model)
    assert int(to_numpy(optimizer.start_step)) == 4 and int(to_numpy(optimizer.end_step_variable)) == 12
    sizes = [k.size for k in optimizer.kernels]
    last_update = 0
    for step, masks in rows:
        if step % 2 == 0 and 4 <= step <= 12:
            last_update = step
        sparsity = tfmot_polynomial_decay(last_update, 0.0, 0.8, 4, 12) if last_update else 0.0
        for size, mask in zip(sizes, masks):
            # The schedule's target, to one weight per kernel.
            assert abs(int(mask.sum()) - (1 - sparsity) * size) <= 1, (step, size, int(mask.sum()))
    # Pruning only: a position once dropped never comes back.
    for (_, before), (_, after) in zip(rows, rows[1:]):
        for a, b in zip(before, after):
            assert not np.any((b > 0) & (a == 0))
    # The end: exactly the planned budget, and the logs say so.
    assert [int(m.sum()) for m in rows[-1][1]] == [k.active for k in optimizer.kernels]
    final = 1 - sum(k.active for k in optimizer.kernels) / sum(sizes)
    assert final == pytest.approx(0.8, abs=0.005)
    assert history["sparsity"][-1] == pytest.approx(final, abs=1e-12)
    assert history["sparsity"][0] < history["sparsity"][-1]


def test_gmp_with_erk_starts_dense_and_ends_at_each_layers_target(data):
    model, rows, _ = _train(data, keras_dstee.GMP(sparsity=0.9, update_freq=2, seed=0), epochs=1)
    optimizer = sparse_optimizer(model)
    first = rows[0][1]
    assert all(m.all() for m in first)  # step 1: dense
    assert [int(m.sum()) for m in rows[-1][1]] == [k.active for k in optimizer.kernels]
    densities = keras_dstee.layer_densities(model, 0.9)
    for k in optimizer.kernels:
        assert k.active == max(1, round(densities[k.variable.path] * k.size))


def test_granet_prunes_on_schedule_and_regrows(data):
    model, rows, history = _train(
        data, keras_dstee.GraNet(sparsity=0.9, initial_sparsity=0.5, distribution="uniform", update_freq=2, end=0.75, seed=0)
    )
    optimizer = sparse_optimizer(model)
    start, end = int(to_numpy(optimizer.start_step)), int(to_numpy(optimizer.end_step_variable))
    assert (start, end) == (0, 12)
    last_update, grown = 0, 0
    previous = None
    for step, masks in rows:
        if step % 2 == 0 and step <= end:
            last_update = step
        sparsity = tfmot_polynomial_decay(last_update, 0.5, 0.9, start, end)
        for k, mask in zip(optimizer.kernels, masks):
            # The schedule's target, to one weight per kernel.
            assert abs(int(mask.sum()) - (1 - sparsity) * k.size) <= 1, (step, k.variable.path)
        if previous is not None:
            grown += sum(int(np.sum((b > 0) & (a == 0))) for a, b in zip(previous, masks))
        previous = masks
    assert grown > 0  # neuroregeneration: positions came back
    assert [int(m.sum()) for m in rows[-1][1]] == [k.active for k in optimizer.kernels]
    assert history["sparsity"][-1] == pytest.approx(
        1 - sum(k.active for k in optimizer.kernels) / sum(k.size for k in optimizer.kernels), abs=1e-12
    )
    assert math.isclose(history["sparsity"][-1], 0.9, abs_tol=0.005)


def test_pruning_methods_save_and_resume(data, tmp_path):
    model, _, _ = _train(data, keras_dstee.GraNet(sparsity=0.9, update_freq=2, seed=0), epochs=1)
    model.save(tmp_path / "granet.keras")
    loaded = keras.saving.load_model(tmp_path / "granet.keras")
    a, b = sparse_optimizer(model), sparse_optimizer(loaded)
    assert b.method == keras_dstee.methods.GraNet(initial_sparsity=0.5)
    assert [k.initial_active for k in a.kernels] == [k.initial_active for k in b.kernels]
    assert [k.active for k in a.kernels] == [k.active for k in b.kernels]
