"""`recalibrate_batch_norm`: moving statistics re-estimated from data with the
current weights; bad input changes nothing."""

import keras
import numpy as np
import pytest
from helpers import compile_model
from helpers import to_numpy
from test_channel_sparsity import _fit
from test_channels import vgg_style

import keras_dstee

L = keras.layers


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    y = L.ReLU()(L.BatchNormalization(name="bn1")(y))
    y = L.Conv2D(4, 3, padding="same", name="conv2")(y)
    y = L.BatchNormalization(name="bn2")(y)
    return keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(y)))


def _statistics(model):
    return [to_numpy(w).copy() for w in model.non_trainable_weights]


def test_the_statistics_become_the_mean_of_the_batch_statistics(data):
    x = data[0][:64]
    model = _model()
    report = keras_dstee.recalibrate_batch_norm(model, x, batch_size=16)
    assert report == {"layers": ["bn1", "bn2"], "batches": 4}
    conv1 = to_numpy(keras.Model(model.inputs, model.get_layer("conv1").output)(x))
    batches = conv1.reshape(4, 16, 8, 8, 6)
    bn1 = model.get_layer("bn1")
    np.testing.assert_allclose(to_numpy(bn1.moving_mean), batches.mean(axis=(1, 2, 3)).mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(to_numpy(bn1.moving_variance), batches.var(axis=(1, 2, 3)).mean(axis=0), rtol=1e-4)
    assert bn1.momentum == 0.99  # restored


def test_one_batch_makes_inference_equal_training_mode(data):
    """With one batch the moving statistics are that batch's: the model in
    inference mode computes what it computes in training mode on it, however
    stale the statistics were before."""
    x = data[0][:32]
    model = _model()
    model.get_layer("bn1").moving_variance.assign(np.full(6, 50.0, "float32"))
    assert not np.allclose(to_numpy(model(x, training=False)), to_numpy(model(x, training=True)), atol=1e-3)
    keras_dstee.recalibrate_batch_norm(model, x, batch_size=32)
    np.testing.assert_allclose(to_numpy(model(x, training=False)), to_numpy(model(x, training=True)), atol=1e-4)


def test_after_channel_removal_only_the_statistics_change(data):
    model = compile_model(vgg_style())
    _fit(model, data, [keras_dstee.DSTEE(sparsity=0.8, channel_sparsity=0.5, update_freq=2, seed=1)])
    trainable = [to_numpy(w).copy() for w in model.trainable_weights]
    before = _statistics(model)
    # A generator of (x, y) batches, as `fit` takes them.
    batches = ((data[0][i : i + 32], data[1][i : i + 32]) for i in range(0, 256, 32))
    assert keras_dstee.recalibrate_batch_norm(model, batches, batch_size=32)["batches"] == 8
    for a, b in zip(trainable, model.trainable_weights):
        np.testing.assert_array_equal(a, to_numpy(b))
    assert any(not np.allclose(a, to_numpy(b)) for a, b in zip(before, model.non_trainable_weights))


def test_frozen_layers_keep_their_statistics(data):
    model = _model()
    model.get_layer("bn2").trainable = False
    before = to_numpy(model.get_layer("bn2").moving_mean).copy()
    assert keras_dstee.recalibrate_batch_norm(model, data[0][:32])["layers"] == ["bn1"]
    np.testing.assert_array_equal(before, to_numpy(model.get_layer("bn2").moving_mean))


@pytest.mark.parametrize(
    "build, x, kwargs, words",
    [
        (_model, np.zeros((8, 5, 5, 3), "float32"), {}, r"`x` must hold input samples of shape \(8, 8, 3\).*\(8, 5, 5, 3\)"),
        (_model, np.full((8, 8, 8, 3), np.nan, "float32"), {}, "8 sample\\(s\\) with NaN or inf"),
        (_model, "images", {}, "`x` must be a NumPy array"),
        (_model, np.zeros((8, 8, 8, 3), "float32"), {"batch_size": 1}, "batch_size"),
        (_model, np.zeros((8, 8, 8, 3), "float32"), {"samples": 0}, "samples"),
        (_model, np.zeros((1, 8, 8, 3), "float32"), {}, "holds 1 sample"),
        (lambda: keras.Sequential([keras.Input((8, 8, 3)), L.Flatten(), L.Dense(2)]),
         np.zeros((8, 8, 8, 3), "float32"), {}, "no trainable BatchNormalization"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(build, x, kwargs, words):
    model = build()
    before = [to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match=words):
        keras_dstee.recalibrate_batch_norm(model, x, **kwargs)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_a_failing_call_restores_the_statistics(data):
    model = _model()
    before = _statistics(model)
    calls = []
    original = model.get_layer("conv2").call

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    model.get_layer("conv2").call = fail_on_second_batch
    with pytest.raises(RuntimeError, match="out of memory"):
        keras_dstee.recalibrate_batch_norm(model, data[0][:64], batch_size=32)
    for a, b in zip(before, model.non_trainable_weights):
        np.testing.assert_array_equal(a, to_numpy(b))
    assert model.get_layer("bn1").momentum == 0.99
