"""Mixed precision, non-finite gradients and extreme sparsities."""

import warnings

import keras
import numpy as np
import pytest
from helpers import EveryStep
from helpers import assert_budget
from helpers import compile_model
from helpers import masks
from helpers import small_cnn
from helpers import to_numpy

import keras_dstee


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(64, activation="relu"),
         keras.layers.Dense(5)]
    )


def _mlp_data(n=256):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 16)).astype("float32"), rng.integers(0, 5, size=n)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision(policy, tmp_path):
    x, y = _mlp_data()
    model = compile_model(_mlp())
    history = []
    model.fit(x, y, batch_size=32, epochs=2, verbose=0,
              callbacks=[keras_dstee.DSTEE(sparsity=0.8, update_freq=2, seed=0),
                         EveryStep(lambda m, b: (assert_budget(m), history.append(masks(m))))])
    optimizer = model.optimizer
    if policy == "mixed_float16":
        # Keras's LossScaleOptimizer stays outermost and wraps ours.
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        optimizer = optimizer.inner_optimizer
    assert isinstance(optimizer, keras_dstee.SparseOptimizer)
    for kernel in optimizer.kernels:
        assert kernel.variable.dtype == "float32"
        assert kernel.mask.dtype == kernel.counter.dtype == "float32"
        assert np.isfinite(to_numpy(kernel.mask)).all()
    assert any((a != b).any() for a, b in zip(history[0], history[-1]))
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_budget(loaded)


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
@pytest.mark.parametrize("order", ["loss_scale_outside", "loss_scale_inside"])
def test_loss_scale_optimizer_in_either_order(policy, order):
    x, y = _mlp_data()
    model = _mlp()
    densities = keras_dstee.layer_densities(model, 0.8)
    sgd = keras.optimizers.SGD(0.05, momentum=0.9)
    if order == "loss_scale_outside":
        optimizer = keras.optimizers.LossScaleOptimizer(keras_dstee.SparseOptimizer(sgd, densities, update_freq=2, end_step=12))
    else:  # what a user may write; `compile` then puts Keras's own outside
        optimizer = keras_dstee.SparseOptimizer(keras.optimizers.LossScaleOptimizer(sgd), densities, update_freq=2, end_step=12)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    sparse = model.optimizer.inner_optimizer
    assert isinstance(sparse, keras_dstee.SparseOptimizer) and sparse.inner_optimizer is sgd
    assert int(to_numpy(sparse.last_update)) == 10  # masks were updated
    for kernel in sparse.kernels:
        mask = to_numpy(kernel.mask)
        assert int(mask.sum()) == kernel.active
        assert (to_numpy(kernel.variable)[mask == 0] == 0).all()


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_loss_scale_optimizer_inside_with_custom_settings_is_refused(policy):
    # Keras's default one would replace it: say which order to write.
    custom = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), initial_scale=128.0)
    with pytest.raises(ValueError, match="LossScaleOptimizer outside"):
        keras_dstee.SparseOptimizer(custom, {})


def test_loss_scale_optimizer_inside_without_mixed_float16_is_refused():
    # `compile` would add no LossScaleOptimizer: nothing would scale the loss.
    default = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="LossScaleOptimizer outside"):
        keras_dstee.SparseOptimizer(default, {})


def test_nan_gradient_at_an_update_step_is_skipped():
    x, y = _mlp_data()
    x[64:96] = np.nan  # the third batch: step 3, a mask-update step
    model = compile_model(_mlp(), keras.optimizers.SGD(0.01))
    history = []

    def check(model, batch):
        for kernel in model.optimizer.kernels:
            weight = to_numpy(kernel.variable)
            mask = to_numpy(kernel.mask)
            assert int(mask.sum()) == kernel.active
            assert (weight[mask == 0] == 0).all()  # exactly 0, not NaN
        history.append(masks(model))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                  callbacks=[keras_dstee.DSTEE(sparsity=0.8, update_freq=3, seed=0), EveryStep(check)])
    for a, b in zip(history[1], history[2]):
        np.testing.assert_array_equal(a, b)  # step 3 left the masks alone
    # Plain SGD turned the active weights into NaN, so later updates skip too.
    assert int(to_numpy(model.optimizer.skipped_updates)) >= 1
    assert any("skipped" in str(w.message) for w in caught)


def test_extreme_sparsity_keeps_one_weight_per_kernel(data):
    x, y = data
    model = compile_model(small_cnn())
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0,
                        callbacks=[keras_dstee.DSTEE(sparsity=0.999, distribution="uniform", update_freq=2, seed=0)])
    for kernel in model.optimizer.kernels:
        assert kernel.active >= 1
    assert_budget(model)
    assert np.isfinite(history.history["loss"]).all()


def test_zero_sparsity_is_exactly_dense(data):
    x, y = data
    dense = compile_model(small_cnn(seed=9))
    dense.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
    sparse = compile_model(small_cnn(seed=9))
    sparse.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False,
               callbacks=[keras_dstee.DSTEE(sparsity=0.0, seed=0)])
    assert sparse.optimizer.kernels == []
    for a, b in zip(dense.weights, sparse.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
