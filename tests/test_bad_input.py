"""Bad input: a ValueError that names the argument, and the model untouched."""

import keras
import numpy as np
import pytest
from helpers import compile_model
from helpers import small_cnn

import keras_dstee


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sparsity": "0.9"}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": None}, "sparsity"),
        ({"distribution": "gaussian"}, "distribution"),
        ({"update_freq": 0}, "update_freq"),
        ({"update_freq": 2.5}, "update_freq"),
        ({"end": 0}, "end"),
        ({"end": 1.5}, "end"),
        ({"drop_fraction": 1.2}, "drop_fraction"),
        ({"exploration": -1}, "exploration"),
    ],
)
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        keras_dstee.DSTEE(**kwargs)


def test_unknown_distribution_lists_choices():
    with pytest.raises(ValueError, match="erk.*er.*uniform"):
        keras_dstee.RigL(distribution="gaussian")


def _weights(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def test_model_without_prunable_kernel(data):
    x, _ = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.BatchNormalization()])
    model.compile(optimizer="sgd", loss="mse")
    before = _weights(model)
    with pytest.raises(ValueError, match="no prunable kernel"):
        model.fit(x, np.zeros((len(x), 3)), epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE()])
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_excluding_everything_is_an_error(data):
    model = compile_model(small_cnn())
    before = _weights(model)
    callback = keras_dstee.DSTEE(exclude=[keras.layers.Conv2D, "dense.*"])
    with pytest.raises(ValueError, match="no prunable kernel"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[callback])
    assert not isinstance(model.optimizer, keras_dstee.SparseOptimizer)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_unknown_exclude_name_lists_layers(data):
    model = compile_model(small_cnn())
    with pytest.raises(ValueError, match="matches no layer.*conv2d"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(exclude=["nope"])])


def test_uncompiled_model(data):
    model = small_cnn()
    before = _weights(model)
    callback = keras_dstee.DSTEE()
    callback.set_model(model)
    with pytest.raises(ValueError, match="compile"):
        callback.on_train_begin()
    with pytest.raises((ValueError, RuntimeError), match="compile"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE()])
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_one_callback_two_models(data):
    callback = keras_dstee.DSTEE(seed=0)
    first = compile_model(small_cnn())
    first.fit(*data, epochs=1, verbose=0, callbacks=[callback])
    second = compile_model(small_cnn(seed=1))
    before = _weights(second)
    with pytest.raises(ValueError, match="another model"):
        second.fit(*data, epochs=1, verbose=0, callbacks=[callback])
    for a, b in zip(before, _weights(second)):
        np.testing.assert_array_equal(a, b)


def test_sparse_optimizer_arguments():
    with pytest.raises(ValueError, match="method"):
        keras_dstee.SparseOptimizer(keras.optimizers.SGD(), {}, method="magic")
    with pytest.raises(ValueError, match="inner_optimizer"):
        keras_dstee.SparseOptimizer("sgd", {})
    with pytest.raises(ValueError, match="density"):
        keras_dstee.SparseOptimizer(keras.optimizers.SGD(), {"a/kernel": 0.0})
