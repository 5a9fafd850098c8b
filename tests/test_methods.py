"""Methods as small classes: the registry, method objects in every entry
point, and a rule a user defines in a few lines (the README's example)."""

import keras
import numpy as np
import pytest
from helpers import EveryStep
from helpers import assert_budget
from helpers import compile_model
from helpers import masks
from helpers import small_cnn
from helpers import sparse_optimizer

import keras_dstee
from keras_dstee.training import methods


# The README's example, as written there.
class NoisyRigL(keras_dstee.methods.RigL):
    """Grow by |gradient| times a random number."""

    def grow_scores(self, weight, grad, counter, step, seed):
        noise = keras.random.uniform(keras.ops.shape(grad), seed=seed)
        return keras.ops.abs(grad) * noise


keras_dstee.methods.register("noisy_rigl", NoisyRigL)


def _fit(data, callback, epochs=2):
    model = compile_model(small_cnn())
    model.fit(*data, batch_size=32, epochs=epochs, verbose=0,
              callbacks=[callback, EveryStep(lambda m, _: assert_budget(m))])
    return model


def test_a_user_defined_rule_trains_with_exact_budgets_and_saves(data, tmp_path):
    model = _fit(data, keras_dstee.SparseTraining("noisy_rigl", sparsity=0.9, update_freq=2, seed=0))
    assert isinstance(sparse_optimizer(model).method, NoisyRigL)
    rigl = _fit(data, keras_dstee.RigL(sparsity=0.9, update_freq=2, seed=0))
    assert any(not np.array_equal(a, b) for a, b in zip(masks(model), masks(rigl)))
    model.save(tmp_path / "noisy.keras")
    loaded = keras.saving.load_model(tmp_path / "noisy.keras")
    assert isinstance(sparse_optimizer(loaded).method, NoisyRigL)
    for a, b in zip(masks(model), masks(loaded)):
        np.testing.assert_array_equal(a, b)


def test_method_objects_work_like_names(data):
    by_object = _fit(data, keras_dstee.SparseTraining(methods.DSTEE(exploration=0.0), update_freq=2, seed=5))
    by_name = _fit(data, keras_dstee.RigL(update_freq=2, seed=5))
    for a, b in zip(masks(by_object), masks(by_name)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(by_object.weights, by_name.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_settings_survive_saving(data, tmp_path):
    model = _fit(data, keras_dstee.DSTEE(exploration=0.5, epsilon=0.1, normalize_gradients=False, seed=1), epochs=1)
    model.save(tmp_path / "m.keras")
    method = sparse_optimizer(keras.saving.load_model(tmp_path / "m.keras")).method
    assert method == methods.DSTEE(exploration=0.5, epsilon=0.1, normalize_gradients=False)


def test_registry():
    assert {"static", "set", "rigl", "dstee", "noisy_rigl"} <= set(methods.names())
    assert methods.get("dstee", exploration=2.0) == methods.DSTEE(exploration=2.0)
    assert methods.get(methods.SET) == methods.SET()
    with pytest.raises(ValueError, match="Unknown `method='magic'`.*dstee"):
        methods.get("magic")
    with pytest.raises(ValueError, match="subclass of keras_dstee.methods.Method"):
        methods.register("bad", dict)
    with pytest.raises(ValueError, match="Give settings to the method itself"):
        methods.get(methods.DSTEE(), exploration=1.0)
    with pytest.raises(ValueError, match="exploration"):
        methods.DSTEE(exploration=-1)


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "keep"])
def test_a_weight_dropped_and_regrown_in_one_update(reset):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, use_bias=False)])
    kernel = model.trainable_variables[0]
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(0.0), {kernel.path: 0.5}, method="rigl", update_freq=1,
        end_step=10, drop_fraction=0.1, reset_regrown=reset, seed=0,
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()
    before = keras.ops.convert_to_numpy(kernel).copy()
    mask = keras.ops.convert_to_numpy(optimizer.kernels[0].mask)
    # The smallest active weight is dropped first; the only nonzero gradient
    # makes it the first to grow back.
    weakest = np.argmin(np.where(mask > 0, np.abs(before), np.inf))
    grad = np.zeros(64, "float32")
    grad[weakest] = 1.0
    optimizer.apply([keras.ops.convert_to_tensor(grad.reshape(8, 8))], model.trainable_variables)
    after = keras.ops.convert_to_numpy(kernel).reshape(-1)
    assert keras.ops.convert_to_numpy(optimizer.kernels[0].mask).reshape(-1)[weakest] == 1
    assert before.reshape(-1)[weakest] != 0
    assert after[weakest] == (0.0 if reset else before.reshape(-1)[weakest])
