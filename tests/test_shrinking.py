"""Training that shrinks: `shrink=True` and `keras_dstee.shrink` rebuild the
model without its removed channels during training, and the run computes
what the masked run computes."""

import csv
import gc
import json
import os
import subprocess
import sys
import weakref

import keras
import numpy as np
import pytest

import keras_dstee
from keras_dstee.training import shrinking
from tests.helpers import to_numpy

BACKEND = keras.backend.backend()
L = keras.layers


def conv_bn_model(seed=0, optimizer="sgd"):
    """Conv, BatchNormalization, Flatten into Dense: channels pass through
    every kind of slice (producer, follower, strided consumer)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(inputs)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU()(h)
    h = L.Conv2D(16, 3, padding="same", name="c2")(h)
    h = L.ReLU()(h)
    h = L.Flatten()(h)
    h = L.Dense(32, activation="relu", name="d1")(h)
    model = keras.Model(inputs, L.Dense(4, name="out")(h))
    inner = keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd" else keras.optimizers.Adam(0.01)
    model.compile(inner, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(128, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 128)


def settings(**overrides):
    base = dict(sparsity=0.8, channel_sparsity=0.5, update_freq=4, end=0.8, channel_end=0.4, seed=3)
    return {**base, **overrides}


def train(xy, method="dstee", shrink=False, epochs=6, callbacks=(), model=None, **overrides):
    x, y = xy
    model = model or conv_bn_model()
    callback = keras_dstee.SparseTraining(method, shrink=shrink, **settings(**overrides))
    history = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, shuffle=False,
                        callbacks=[callback, *callbacks])
    return model, callback, history.history


def assert_same_weights(a, b, atol=1e-5):
    assert [tuple(v.shape) for v in a.weights] == [tuple(v.shape) for v in b.weights]
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_allclose(to_numpy(u), to_numpy(v), atol=atol, err_msg=u.path)


@pytest.mark.parametrize("method", ["dstee", "rigl"])
def test_the_shrunk_run_equals_the_masked_run(xy, method):
    masked, _, masked_logs = train(xy, method)
    shrunk, callback, logs = train(xy, method, shrink=True)
    assert len(callback.rebuilds) >= 1
    first = callback.rebuilds[0]
    assert first["channels_after"] < first["channels_before"] == 64
    assert first["flops_after"] < first["flops_before"]
    assert first["rebuild_s"] > 0
    # Same losses and the same logged sparsity and coverage (measured over
    # the model before shrinking).
    np.testing.assert_allclose(logs["loss"], masked_logs["loss"], rtol=1e-5)
    for key in ("sparsity", "coverage", "live_channels"):
        np.testing.assert_allclose(logs[key], masked_logs[key], atol=1e-6, err_msg=key)
    # The masked model, cut the same way, is the shrunk one.
    keras_dstee.shrink(masked)
    assert_same_weights(masked, shrunk)


def test_a_pruning_method_keeps_its_density_schedule_when_shrunk(xy):
    # GraNet's densities are planned over each kernel's size before
    # shrinking. (Its weights are not compared: pruning many weights by
    # magnitude meets near-ties that float rounding decides either way.)
    _, _, masked_logs = train(xy, "granet")
    _, callback, logs = train(xy, "granet", shrink=True)
    assert callback.rebuilds
    assert logs["sparsity"] == masked_logs["sparsity"]
    assert logs["sparsity"][-1] > logs["sparsity"][0]


def test_budgets_stay_exact_after_each_rebuild(xy):
    def budget_log(seen):
        class Budget(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                optimizer = keras_dstee.optimizer.find_sparse_optimizer(self.model.optimizer)
                masks = [to_numpy(k.mask) for k in optimizer.kernels]
                weights = [to_numpy(k.variable) for k in optimizer.kernels]
                seen.append(sum(int(m.sum()) for m in masks))
                assert all((w[m == 0] == 0).all() for w, m in zip(weights, masks))

        return Budget()

    masked, shrunk = [], []
    train(xy, callbacks=[budget_log(masked)])
    _, callback, _ = train(xy, shrink=True, callbacks=[budget_log(shrunk)])
    assert len(callback.rebuilds) >= 1
    # Epoch by epoch the active weights the masked run holds: where the live
    # channels cannot hold a kernel's whole budget, both runs lose the same.
    assert shrunk == masked


def test_shrink_slices_the_optimizer_state_and_keeps_the_outputs(xy):
    x, _ = xy
    model, callback, _ = train(xy, epochs=3, model=conv_bn_model(optimizer="adam"))
    old = callback.optimizer
    assert (to_numpy(old.channels.alive) == 0).any()
    before = to_numpy(model(x[:16], training=False))
    weights_before = {id(v): (v.path, to_numpy(v)) for v in model.trainable_variables}
    slots_before = {v.name: to_numpy(v) for v in old.inner_optimizer.variables}
    iterations = int(to_numpy(old.iterations))
    record = shrinking.shrink_with_record(model)
    new = keras_dstee.optimizer.find_sparse_optimizer(model.optimizer)
    assert new is not old and model.optimizer is record.optimizer
    np.testing.assert_allclose(to_numpy(model(x[:16], training=False)), before, atol=1e-5)
    assert int(to_numpy(new.iterations)) == iterations
    sliced = 0
    for old_variable_id, (_, removed) in record.replaced.items():
        if old_variable_id not in weights_before:
            continue  # BatchNormalization's moving statistics
        path, value = weights_before[old_variable_id]
        for slot in ("momentum", "velocity"):  # Adam's m and v
            name = f"{path.replace('/', '_')}_{slot}"
            got = next(to_numpy(v) for v in new.inner_optimizer.variables if v.name == name)
            expected = slots_before[name]
            for axis, positions in removed.items():
                expected = np.delete(expected, positions, axis=axis)
            np.testing.assert_array_equal(got, expected)
            sliced += 1
    assert sliced >= 4
    # Nothing left to cut: the same optimizer comes back.
    assert keras_dstee.shrink(model) is model.optimizer


@pytest.mark.skipif(BACKEND != "torch", reason="a tensor layout: only torch keeps a variable's strides")
def test_shrunk_variables_are_laid_out_like_new_ones(xy):
    # A transposed layout made every optimizer and mask op on a shrunk
    # kernel several times slower (VGG-19: steps 1.3x the final
    # architecture's).
    model, _, _ = train(xy, epochs=3)
    keras_dstee.shrink(model)
    variables = [*model.weights, *model.optimizer.variables]
    strided = [v.path for v in variables if not v.value.is_contiguous()]
    assert not strided, strided


def test_a_rebuild_releases_the_old_variables(xy, tmp_path):
    """The full-width weights, masks and slots are freed after a rebuild
    (on TensorFlow its object graph named them apart from Keras's lists)."""
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            optimizer = self.model.optimizer
            seen.extend(weakref.ref(v) for v in [*self.model.weights, *optimizer.variables])

    model, callback, _ = train(xy, shrink=True, epochs=3, callbacks=[Watch()])
    assert callback.rebuilds
    gc.collect()
    current = {id(v) for v in [*model.weights, *model.optimizer.variables]}
    alive = [ref().path for ref in seen if ref() is not None and id(ref()) not in current]
    assert alive == []
    if BACKEND == "tensorflow":
        import tensorflow as tf

        path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
        saved = {tuple(s) for n, s in tf.train.list_variables(path) if n.startswith("model/_operations/")}
        assert saved == {tuple(v.shape) for v in model.weights}


def test_a_checkpoint_saved_after_a_rebuild_resumes_exactly(xy, tmp_path):
    x, y = xy
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    whole, callback, _ = train(xy, shrink=True, callbacks=[checkpoint])
    assert callback.rebuilds and callback.rebuilds[0]["epoch"] <= 3
    resumed = keras.saving.load_model(tmp_path / "epoch3.keras")
    assert resumed.get_layer("c2").kernel.shape[-1] < 16  # the smaller model
    resumed.fit(x, y, epochs=6, initial_epoch=3, batch_size=16, verbose=0, shuffle=False,
                callbacks=[keras_dstee.SparseTraining("dstee", shrink=True, **settings())])
    assert_same_weights(resumed, whole)


def test_callbacks_see_one_fit(xy, tmp_path):
    log = tmp_path / "log.csv"
    early = keras.callbacks.EarlyStopping(monitor="loss", patience=100, restore_best_weights=True,
                                          start_from_epoch=0)
    rates = []

    def schedule(epoch, rate):
        rates.append(epoch)
        return 0.05 * 0.9**epoch

    model, callback, logs = train(
        xy, shrink=True,
        callbacks=[keras.callbacks.CSVLogger(str(log)), early, keras.callbacks.LearningRateScheduler(schedule),
                   keras.callbacks.TensorBoard(str(tmp_path / "tb"))],
    )
    assert any(name.startswith("events") for _, _, files in os.walk(tmp_path / "tb") for name in files)
    assert callback.rebuilds
    assert len(logs["loss"]) == 6 and rates == list(range(6))
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert "sparsity" in rows[0]
    np.testing.assert_allclose(float(to_numpy(model.optimizer.learning_rate)), 0.05 * 0.9**5, rtol=1e-6)
    # The best weights were cut with the model and restored into it.
    best = int(np.argmin(logs["loss"]))
    assert early.best_epoch == best
    assert [w.shape for w in early.best_weights] == [tuple(v.shape) for v in model.weights]


def test_bad_input_is_refused_and_the_model_is_untouched(xy, tmp_path):
    x, y = xy
    with pytest.raises(ValueError, match="channel_sparsity=0 removes none"):
        keras_dstee.DSTEE(sparsity=0.9, shrink=True)
    with pytest.raises(ValueError, match="channel_end"):
        keras_dstee.DSTEE(sparsity=0.9, channel_end=0.5)
    with pytest.raises(ValueError, match="channel_end"):
        keras_dstee.DSTEE(sparsity=0.9, channel_sparsity=0.5, channel_begin=0.3, channel_end=0.2)

    class MyDense(L.Dense):
        pass

    keras.utils.set_random_seed(0)
    custom = keras.Sequential([keras.Input((8, 8, 3)), L.Flatten(), MyDense(16, activation="relu"), L.Dense(4)])
    custom.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [to_numpy(v) for v in custom.weights]
    with pytest.raises(ValueError, match="MyDense has no known width setting"):
        custom.fit(x, y, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(shrink=True, **settings())])
    for value, v in zip(before, custom.weights):
        np.testing.assert_array_equal(value, to_numpy(v))

    model = conv_bn_model()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(ValueError, match="BackupAndRestore"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(shrink=True, **settings()), backup])
    with pytest.raises(ValueError, match="SparseOptimizer` with `channel_sparsity"):
        keras_dstee.shrink(conv_bn_model())


def test_a_rebuild_that_fails_leaves_the_model_as_it_was(xy, monkeypatch):
    x, _ = xy
    model, callback, _ = train(xy, epochs=3)
    optimizer = model.optimizer
    shapes = [tuple(v.shape) for v in model.weights]
    before = to_numpy(model(x[:16], training=False))

    def fail(self, model, replaced):
        raise RuntimeError("boom")

    monkeypatch.setattr(shrinking._OptimizerState, "rebuilt", fail)
    with pytest.raises(RuntimeError, match="boom"):
        keras_dstee.shrink(model)
    assert model.optimizer is optimizer
    assert [tuple(v.shape) for v in model.weights] == shapes
    assert model.get_layer("c2").filters == 16
    np.testing.assert_allclose(to_numpy(model(x[:16], training=False)), before, atol=1e-6)
    monkeypatch.undo()
    # ... and it trains on, and shrinks, as if nothing had happened.
    keras_dstee.shrink(model)
    assert model.get_layer("c2").filters < 16


def test_a_shrunk_model_exports_and_slims(xy, tmp_path):
    from keras_dstee.deploy import tflite_runner

    x, _ = xy
    model, callback, _ = train(xy, shrink=True, epochs=3)
    assert callback.rebuilds
    expected = to_numpy(model(x[:8], training=False))
    report = keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"))
    np.testing.assert_allclose(tflite_runner.predict_tflite(report["path"], x[:8]), expected, atol=1e-4)
    keras_dstee.export_saved_model(model, str(tmp_path / "saved"))
    assert os.path.isfile(tmp_path / "saved" / "saved_model.pb")
    if BACKEND != "jax":  # jax's ONNX goes through the same worker as its TFLite
        pytest.importorskip("onnx")
        keras_dstee.export_onnx(model, str(tmp_path / "m.onnx"))
        assert os.path.getsize(tmp_path / "m.onnx") > 0
    slimmed = keras_dstee.slim(model)
    np.testing.assert_allclose(to_numpy(slimmed(x[:8], training=False)), expected, atol=1e-4)
    summary = keras_dstee.summary(model, print_fn=lambda line: None)
    assert summary["total"]["size"] == sum(int(np.prod(v.shape)) for v in model.trainable_variables if len(v.shape) > 1)
    int8 = keras_dstee.export_tflite(model, str(tmp_path / "int8.tflite"), quantize="int8",
                                     representative_data=x[:32])
    got = tflite_runner.predict_tflite(int8["path"], x[:8])
    assert np.mean(np.argmax(got, -1) == np.argmax(expected, -1)) >= 0.75


def test_a_sequential_model_with_depthwise_and_nested_models_shrinks(xy):
    x, y = xy

    def make():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        h = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inputs)))
        block_in = keras.Input((8, 8, 16))
        block = keras.Model(block_in, L.Add()([L.ReLU()(L.Conv2D(16, 3, padding="same")(block_in)), block_in]))
        h = L.SeparableConv2D(12, 3, padding="same", activation="relu")(L.DepthwiseConv2D(3, padding="same")(block(h)))
        head = keras.Sequential([keras.Input((12,)), L.Dense(16, activation="relu"), L.Dense(4)])
        model = keras.Model(inputs, head(L.GlobalAveragePooling2D()(h)))
        model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    masked, _, masked_logs = train(xy, model=make(), epochs=4)
    shrunk, callback, logs = train(xy, model=make(), epochs=4, shrink=True)
    assert callback.rebuilds
    np.testing.assert_allclose(logs["loss"], masked_logs["loss"], rtol=1e-4)
    keras_dstee.shrink(masked)
    assert_same_weights(masked, shrunk, atol=1e-4)


DISTRIBUTED = """
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np, keras, keras_dstee
sys.path.insert(0, sys.argv[1])
from tests.test_shrinking import conv_bn_model, settings
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 8, 8, 3)).astype("float32"); y = rng.integers(0, 4, 128)
if keras.backend.backend() == "jax":
    import jax
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    scope = None
else:
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    scope = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {}
for shrink in (False, True):
    if scope is None:
        model = conv_bn_model()
    else:
        with scope.scope():
            model = conv_bn_model()
    callback = keras_dstee.DSTEE(shrink=shrink, **settings())
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0, shuffle=False, callbacks=[callback])
    out[str(shrink)] = {"loss": history.history["loss"], "rebuilds": len(callback.rebuilds)}
    if shrink:
        weights = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.weights]
    else:
        keras_dstee.shrink(model)
        masked = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.weights]
out["diff"] = max(float(np.abs(a - b).max()) for a, b in zip(weights, masked))
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(BACKEND == "torch", reason="DataParallel (jax) and MirroredStrategy (tensorflow)")
def test_shrinking_under_data_parallel_and_mirrored_strategy():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", DISTRIBUTED, root], env=dict(os.environ), capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["True"]["rebuilds"] >= 1
    np.testing.assert_allclose(out["True"]["loss"], out["False"]["loss"], rtol=1e-5)
    assert out["diff"] < 1e-5


def test_mixed_precision_keeps_its_loss_scale(xy):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        _, _, masked_logs = train(xy, epochs=4)
        model, callback, logs = train(xy, epochs=4, shrink=True)
    finally:
        keras.config.set_dtype_policy("float32")
    assert callback.rebuilds
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras_dstee.optimizer.find_sparse_optimizer(model.optimizer) is callback.optimizer
    assert logs["sparsity"] == masked_logs["sparsity"]
    np.testing.assert_allclose(logs["loss"], masked_logs["loss"], rtol=1e-2)


@pytest.mark.skipif(BACKEND == "jax", reason="an eager loop: TensorFlow's GradientTape, torch's backward")
def test_a_custom_training_loop_shrinks_between_steps(xy):
    x, y = xy
    model = conv_bn_model()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9), keras_dstee.layer_densities(model, sparsity=0.8),
        update_freq=2, end_step=12, seed=0, channel_sparsity=0.5,
        channel_groups=keras_dstee.channel_groups(model),
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()

    def step(optimizer, batch):
        xb, yb = x[batch * 16 : batch * 16 + 16], y[batch * 16 : batch * 16 + 16]
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
        else:
            import torch

            loss = loss_fn(torch.as_tensor(yb), model(torch.as_tensor(xb), training=True))
            model.zero_grad()
            loss.backward()
            grads = [v.value.grad for v in model.trainable_variables]
            with torch.no_grad():
                optimizer.apply(grads, model.trainable_variables)

    for batch in range(8):
        step(optimizer, batch)
    before = to_numpy(model(x[:16], training=False))
    new = keras_dstee.shrink(model, optimizer)
    assert new is not optimizer and model.get_layer("c2").filters < 16
    np.testing.assert_allclose(to_numpy(model(x[:16], training=False)), before, atol=1e-5)
    assert int(to_numpy(new.step)) == 8
    for batch in range(8):
        step(new, batch)
    assert int(to_numpy(new.step)) == 16
    for k in new.kernels:
        assert (to_numpy(k.variable)[to_numpy(k.mask) == 0] == 0).all()
