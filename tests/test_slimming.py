"""`slim`: a smaller model without the channels that change no output,
computing the same function, as a plain Keras model."""

import json
import zipfile

import keras
import numpy as np
import pytest
from helpers import to_numpy
from test_channels import densenet_style
from test_channels import mobilenet_v2_style
from test_channels import resnet_style
from test_channels import vgg_style

import keras_dstee
from keras_dstee.structure import liveness
from keras_dstee.structure import slimming

STYLES = {
    "vgg": (vgg_style, (8, 8, 3)),
    "resnet": (resnet_style, (8, 8, 3)),
    "densenet": (densenet_style, (8, 8, 3)),
    "mobilenet_v2": (mobilenet_v2_style, (8, 8, 4)),
}


def _silence(slices, channels):
    """Zeroes the channels' weights in `slices` (what removing them does)."""
    for s in slices:
        if s.variable.name in ("moving_mean", "moving_variance"):
            continue
        weight = to_numpy(s.variable).copy()
        index = [slice(None)] * weight.ndim
        index[s.axis] = np.concatenate([s.positions[c] for c in channels])
        weight[tuple(index)] = 0.0
        s.variable.assign(weight)


def _remove_some_channels(model, consumers=False):
    """Silences every other channel of each removable group (and, with
    `consumers`, what reads it, as channel removal in training does);
    returns how many channels went."""
    removed = 0
    for group in keras_dstee.channel_groups(model):
        if group.removable:
            chosen = list(range(0, group.size, 2))
            _silence(group.producers + group.followers + (group.consumers if consumers else []), chosen)
            removed += len(chosen)
    return removed


def _parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_slim_removes_silent_channels_and_computes_the_same(style, tmp_path):
    build, shape = STYLES[style]
    model = build()
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype("float32")
    assert _remove_some_channels(model) > 0
    expected = to_numpy(model(x, training=False))
    slimmed = keras_dstee.slim(model)
    assert type(slimmed) is type(model)
    assert _parameters(slimmed) < _parameters(model)
    np.testing.assert_allclose(to_numpy(slimmed(x, training=False)), expected, atol=1e-5)
    # A plain Keras model: saved without keras_dstee, loaded, trained on.
    path = str(tmp_path / "slim.keras")
    slimmed.save(path)
    with zipfile.ZipFile(path) as archive:
        assert "keras_dstee" not in json.dumps(json.loads(archive.read("config.json")))
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(x, training=False)), expected, atol=1e-5)
    loaded.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = loaded.fit(x, np.zeros(len(x), "int32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_slim_removes_channels_nothing_reads():
    model = vgg_style()
    (conv1, _, _) = keras_dstee.channel_groups(model)
    _silence(conv1.consumers, [0, 1, 2])
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    slimmed = keras_dstee.slim(model)
    assert slimmed.get_layer("conv1").filters == 3 and slimmed.get_layer("conv2").kernel.shape[-2] == 3
    np.testing.assert_allclose(to_numpy(slimmed(x, training=False)), to_numpy(model(x, training=False)), atol=1e-5)


def test_slim_keeps_a_block_sparse_kernel_block_sparse():
    """Units of a layer whose reader has (16, 1) blocks go only a whole
    aligned block at a time: a silent unit inside a live block stays, so the
    reader keeps its blocks (TFLite's int8 sparse kernel needs them)."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, name="hidden"), keras.layers.Dense(32, name="reader")])
    blocks = rng.random((4, 32)) < 0.5
    blocks[0] = False  # units 0-15: nothing reads them
    reader = np.repeat(blocks, 16, axis=0) * rng.normal(size=(64, 32))
    reader[40] = 0.0  # what a weight grown on a silent unit stays, inside live blocks
    model.get_layer("reader").kernel.assign(reader.astype("float32"))
    hidden = to_numpy(model.get_layer("hidden").kernel).copy()
    hidden[:, [20, 40]] = 0.0  # silent units inside live blocks
    model.get_layer("hidden").kernel.assign(hidden)
    model.get_layer("hidden").bias.assign(np.zeros(64, "float32"))
    group = next(g for g in keras_dstee.channel_groups(model) if g.layers == ["hidden"])
    assert slimming.block_length(group.consumers[0]) == 16
    assert liveness.gone_channels(group) == [*range(16), 20, 40]
    slimmed = keras_dstee.slim(model)
    assert slimmed.get_layer("hidden").units == 48
    np.testing.assert_array_equal(to_numpy(slimmed.get_layer("reader").kernel), reader[16:].astype("float32"))
    x = rng.normal(size=(4, 8)).astype("float32")
    np.testing.assert_allclose(to_numpy(slimmed(x)), to_numpy(model(x)), atol=1e-5)
    # Unstructured zeros (rows 0-15 still unread): every silent unit goes.
    reader = (rng.random((64, 32)) < 0.3) * rng.normal(size=(64, 32))
    reader[:16] = 0.0
    model.get_layer("reader").kernel.assign(reader.astype("float32"))
    assert slimming.block_length(group.consumers[0]) == 1
    assert keras_dstee.slim(model).get_layer("hidden").units == 64 - 16 - 2


def test_slim_of_a_sparse_trained_model_computes_the_same():
    model = vgg_style()
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 64)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[keras_dstee.DSTEE(sparsity=0.95, update_freq=1, seed=0)])
    removed = _remove_some_channels(model, consumers=True)
    slimmed = keras_dstee.slim(model)
    np.testing.assert_allclose(to_numpy(slimmed(x, training=False)), to_numpy(model(x, training=False)), atol=1e-5)
    # At 95 % some more channels are unread or silent by themselves: they go too.
    channels = lambda m: sum(m.get_layer(n).kernel.shape[-1] for n in ("conv1", "conv2"))  # noqa: E731
    assert channels(slimmed) <= channels(model) - removed + 1
    assert _parameters(slimmed) < _parameters(model)
    # A plain model: not compiled with the sparse optimizer, no mask constraint.
    assert not slimmed.compiled and model.compiled
    assert not any(isinstance(v.constraint, keras_dstee.constraints.MaskConstraint) for v in slimmed.weights)


@pytest.mark.parametrize("function", ["channel_groups", "slim"])
def test_subclassed_and_unbuilt_models_are_refused(function):
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=f"{function} needs a Functional or Sequential model.*subclassed"):
        getattr(keras_dstee, function)(Net())
    with pytest.raises(ValueError, match="not built"):
        getattr(keras_dstee, function)(keras.Sequential([keras.layers.Dense(3)]))


def test_export_tflite_and_saved_model_with_slim(tmp_path):
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    model = vgg_style()
    _remove_some_channels(model, consumers=True)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    expected = to_numpy(model(x, training=False))
    full = keras_dstee.export_tflite(model, str(tmp_path / "full.tflite"))
    slimmed = keras_dstee.export_tflite(model, str(tmp_path / "slim.tflite"), slim=True)
    assert slimmed["dense_bytes"] < full["dense_bytes"]
    interpreter = litert.Interpreter(model_path=slimmed["path"])
    interpreter.allocate_tensors()
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    for example, want in zip(x, expected):
        interpreter.set_tensor(inputs["index"], example[None])
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(outputs["index"])[0], want, atol=1e-5)
    assert keras_dstee.export_saved_model(model, str(tmp_path / "saved"), slim=True) == str(tmp_path / "saved")
    assert (tmp_path / "saved" / "saved_model.pb").exists()
