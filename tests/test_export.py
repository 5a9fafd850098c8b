"""Strip, SavedModel and sparse TFLite export from every backend; the CLI."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import compile_model
from helpers import only_on
from helpers import small_cnn
from helpers import to_numpy

import keras_dstee
from keras_dstee import cli

litert = pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def sparse_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=128)
    model = compile_model(small_cnn(seed=2))
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[keras_dstee.DSTEE(sparsity=0.9, update_freq=2, seed=1)])
    return model, x[:4]


def _run_tflite(path, x, resolver):
    options = {}
    if resolver != "default":
        options["experimental_op_resolver_type"] = getattr(litert.OpResolverType, resolver)
    interpreter = litert.Interpreter(model_path=path, **options)
    interpreter.allocate_tensors()
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for example in x:
        interpreter.set_tensor(inputs["index"], example[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(outputs["index"])[0])
    return np.stack(results)


def test_tflite_float_matches_keras(sparse_model, tmp_path):
    model, x = sparse_model
    report = keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"))
    assert report["op_resolver"] == "default"
    assert os.path.getsize(report["path"]) == report["bytes"]
    # 90% sparse: the sparse format is much smaller than the dense export.
    assert report["bytes"] < 0.5 * report["dense_bytes"]
    np.testing.assert_allclose(_run_tflite(report["path"], x, "default"), to_numpy(model(x)), atol=1e-5)


def test_tflite_int8_close_to_keras(sparse_model, tmp_path):
    model, x = sparse_model
    report = keras_dstee.export_tflite(model, str(tmp_path / "m8.tflite"), quantize="int8")
    # Dynamic range; sparse int8 conv weights would fail in the default
    # delegate, so they are stored dense and the default interpreter runs it.
    assert report["quantization"] == "dynamic_range_int8" and report["op_resolver"] == "default"
    assert report["int8_stored_dense"]
    expected = to_numpy(model(x))
    # Stated bound for int8 weights: 5% of the largest logit.
    bound = 0.05 * np.abs(expected).max()
    assert np.abs(_run_tflite(report["path"], x, "default") - expected).max() <= bound


def test_saved_model(sparse_model, tmp_path):
    model, x = sparse_model
    path = keras_dstee.export_saved_model(model, str(tmp_path / "saved"))
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        restored = tf.saved_model.load(path)
        np.testing.assert_allclose(restored.serve(x).numpy(), to_numpy(model(x)), atol=1e-5)


def test_export_bad_paths(sparse_model, tmp_path):
    model, _ = sparse_model
    with pytest.raises(ValueError, match="folder"):
        keras_dstee.export_tflite(model, str(tmp_path / "missing" / "m.tflite"))
    with pytest.raises(ValueError, match="quantize"):
        keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"), quantize="int4")


def test_strip_keeps_weights_and_loads_without_the_plugin(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 5, size=64)
    model = compile_model(small_cnn(seed=2))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(sparsity=0.9, update_freq=1, seed=1)])
    weights = [to_numpy(w) for w in model.weights]
    inner = model.optimizer.inner_optimizer
    assert keras_dstee.strip(model) is model
    assert model.optimizer is inner
    assert all(v.constraint is None for v in model.trainable_variables)
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(before, to_numpy(after))
    path = str(tmp_path / "stripped.keras")
    model.save(path)
    # A fresh interpreter that cannot import keras_dstee loads the file.
    code = (
        "import sys; sys.modules['keras_dstee'] = None; import keras, numpy as np;"
        f"m = keras.saving.load_model({path!r});"
        "print(type(m.optimizer).__name__, sum(int(np.count_nonzero(keras.ops.convert_to_numpy(w))) for w in m.weights))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    nonzeros = sum(int(np.count_nonzero(w)) for w in weights)
    assert result.stdout.split()[-2:] == [type(inner).__name__, str(nonzeros)]


@only_on("tensorflow", "what TFLite does with the converted file (exports from jax and torch: above)")
def test_cli(sparse_model, tmp_path, capsys):
    model, _ = sparse_model
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert cli.main(["summary", path]) == 0
    assert "Total" in capsys.readouterr().out
    out = str(tmp_path / "cli.tflite")
    assert cli.main(["export", path, "--tflite", out]) == 0
    assert os.path.getsize(out) > 0 and "gzipped" in capsys.readouterr().out
    for argv, message in [
        (["export", str(tmp_path / "nope.keras"), "--tflite", out], "no such file"),
        (["export", __file__, "--tflite", out], "not a Keras model"),
        (["export", path, "--tflite", str(tmp_path / "no" / "x.tflite")], "folder does not exist"),
        (["export", path], "--tflite"),
    ]:
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert message in capsys.readouterr().err


def _fully_connected_weights(path):
    """For each FULLY_CONNECTED op of the file: (stored sparse, fed by DENSIFY)."""
    interpreter = litert.Interpreter(
        model_path=path, experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    densified = {out for op in ops if op["op_name"] == "DENSIFY" for out in op["outputs"]}
    return [
        (bool(tensors[op["inputs"][1]]["sparsity_parameters"]), op["inputs"][1] in densified)
        for op in ops
        if op["op_name"] == "FULLY_CONNECTED"
    ]


def _dense_model(block_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = rng.integers(0, 8, size=256)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(8)]
    )
    compile_model(model)
    callback = keras_dstee.DSTEE(sparsity=0.9, distribution="uniform", block_size=block_size, update_freq=2, seed=1)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    return model, x[:4]


@only_on("tensorflow", "what TFLite does with the converted file (exports from jax and torch: above)")
def test_block_trained_dense_layers_are_stored_sparse(tmp_path):
    model, x = _dense_model(block_size=(4, 1))
    report = keras_dstee.export_tflite(model, str(tmp_path / "b.tflite"), optimize_for="latency")
    # Read from the file itself: every FullyConnected weight stays sparse,
    # no DENSIFY in front of it.
    assert _fully_connected_weights(report["path"]) == [(True, False)] * 3
    assert [row["storage"] for row in report["layers"]] == ["sparse kernel"] * 3
    assert [row["op"] for row in report["layers"]] == ["FULLY_CONNECTED"] * 3
    assert report["accelerated"] == 3
    np.testing.assert_allclose(_run_tflite(report["path"], x, "default"), to_numpy(model(x)), atol=1e-5)


@only_on("tensorflow", "what TFLite does with the converted file (exports from jax and torch: above)")
def test_latency_export_warns_when_nothing_is_accelerated(tmp_path):
    model, x = _dense_model(block_size=None)
    with pytest.warns(UserWarning, match=r"not faster than dense.*block_size=\(4, 1\)"):
        report = keras_dstee.export_tflite(model, str(tmp_path / "u.tflite"), optimize_for="latency")
    assert _fully_connected_weights(report["path"]) == [(False, True)] * 3
    assert [row["storage"] for row in report["layers"]] == ["densified at load"] * 3
    assert report["accelerated"] == 0
    np.testing.assert_allclose(_run_tflite(report["path"], x, "default"), to_numpy(model(x)), atol=1e-5)
    with pytest.raises(ValueError, match="optimize_for"):
        keras_dstee.export_tflite(model, str(tmp_path / "u.tflite"), optimize_for="speed")
    with pytest.raises(ValueError, match="sparse"):
        keras_dstee.export_tflite(model, str(tmp_path / "u.tflite"), sparse=False, optimize_for="latency")


@only_on("tensorflow", "what TFLite does with the converted file (exports from jax and torch: above)")
def test_conv_layers_are_reported_densified(sparse_model, tmp_path):
    model, _ = sparse_model
    with pytest.warns(UserWarning, match="XNNPACK"):
        report = keras_dstee.export_tflite(model, str(tmp_path / "c.tflite"), optimize_for="latency")
    by_op = {row["op"]: row for row in report["layers"]}
    assert by_op["CONV_2D"]["storage"] == "densified at load"
    assert "xnnpack_sparse_check" in by_op["CONV_2D"]["reason"]
