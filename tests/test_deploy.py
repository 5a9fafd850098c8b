"""What users ship: full-integer int8 TFLite (calibrated, runs in the default
interpreter), its accuracy measured on the file, and ONNX."""

import importlib.util
import os
import warnings

import keras
import numpy as np
import pytest
from helpers import compile_model
from helpers import only_on
from helpers import small_cnn
from helpers import to_numpy

import keras_dstee
from keras_dstee import calibration
from keras_dstee import cli
from keras_dstee.deploy import tflite_rewrite
from keras_dstee.deploy import tflite_runner

litert = pytest.importorskip("ai_edge_litert.interpreter")
BACKEND = keras.backend.backend()
# What TFLite itself does with a converted file is the same from every
# backend (TensorFlow writes it): those tests run once.
tensorflow_only = only_on("tensorflow", "the same file from every backend")


def _learnable(n=256, seed=0):
    """Images whose class is a fixed linear function of their channel means."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2)) @ rng.normal(size=(3, 5))).argmax(-1)
    return x, y


@pytest.fixture(scope="module")
def trained():
    x, y = _learnable()
    model = compile_model(small_cnn(seed=2))
    model.fit(x, y, batch_size=32, epochs=6, verbose=0, callbacks=[keras_dstee.DSTEE(sparsity=0.9, update_freq=2, seed=1)])
    keras_dstee.strip(model)
    return model, x, y


def _accuracy(model, x, y):
    return float(np.mean(to_numpy(model(x)).argmax(-1) == y))


def _weights(path):
    """The tensor details of each conv / fully-connected weight in the file."""
    interpreter = tflite_runner.open_interpreter(path, builtin_only=True)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    return [tensors[op["inputs"][1]] for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]


def _weight_dtypes(path):
    return [weight["dtype"] for weight in _weights(path)]


# int8 inputs and calibration batches with labels are handled before the
# converter runs, the same way from every backend.
@pytest.mark.parametrize("io_dtype", ["float32", pytest.param("int8", marks=tensorflow_only)])
def test_full_int8_runs_in_the_default_interpreter_close_to_keras(trained, tmp_path, io_dtype):
    model, x, y = trained
    path = str(tmp_path / "full.tflite")
    # As a user holds calibration data: an array, or batches with labels.
    data = x[:200] if io_dtype == "float32" else ((x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32))
    report = keras_dstee.export_tflite(model, path, quantize="int8", representative_data=data, io_dtype=io_dtype)
    assert report["quantization"] == "full_int8" and report["op_resolver"] == "default"
    assert _weight_dtypes(path) == [np.int8] * 4
    interpreter = litert.Interpreter(model_path=path)  # the default interpreter, XNNPack included
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.dtype(io_dtype)
    # The file's accuracy is the model's, give or take quantization.
    assert abs(keras_dstee.evaluate_tflite(path, x, y) - _accuracy(model, x, y)) <= 0.03
    agree = tflite_runner.predict_tflite(path, x).argmax(-1) == to_numpy(model(x)).argmax(-1)
    assert agree.mean() >= 0.95
    # The report measures the same on the calibration samples (200 or 256).
    calibrated = 200 if io_dtype == "float32" else 256
    assert abs(report["calibration_agreement"] - agree[:calibrated].mean()) <= 1 / calibrated


def _outlier_mlp():
    """An MLP whose hidden layer has one huge unit the classifier ignores:
    int8 activations (one scale for the layer) round the others to zero."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    hidden, bias = rng.normal(size=(16, 32)).astype("float32"), np.zeros(32, "float32")
    bias[0] = 1e5
    head = rng.normal(size=(32, 10)).astype("float32")
    head[0] = 0.0
    model.set_weights([hidden, bias, head, np.zeros(10, "float32")])
    return model, rng.normal(size=(300, 16)).astype("float32")


def test_full_int8_that_loses_the_models_classes_warns(tmp_path):
    model, x = _outlier_mlp()
    path = str(tmp_path / "outlier.tflite")
    with pytest.warns(UserWarning, match="calibration samples"):
        report = keras_dstee.export_tflite(model, path, quantize="int8", representative_data=x)
    agree = tflite_runner.predict_tflite(path, x).argmax(-1) == to_numpy(model(x)).argmax(-1)
    assert report["calibration_agreement"] == pytest.approx(agree.mean()) and agree.mean() < 0.5
    # Dynamic range keeps float activations: no agreement to measure, no warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dynamic = keras_dstee.export_tflite(model, str(tmp_path / "dynamic.tflite"), quantize="int8")
    assert not [w for w in caught if "calibration samples" in str(w.message)]
    assert "calibration_agreement" not in dynamic
    assert np.mean(tflite_runner.predict_tflite(dynamic["path"], x).argmax(-1) == to_numpy(model(x)).argmax(-1)) >= 0.95
    # One regression output: no classes to agree on, nothing measured.
    regression = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    report = keras_dstee.export_tflite(regression, str(tmp_path / "regression.tflite"), quantize="int8", representative_data=x)
    assert report["quantization"] == "full_int8" and "calibration_agreement" not in report


def test_per_tensor_int8_has_one_scale_per_weight(trained, tmp_path):
    model, x, y = trained
    path = str(tmp_path / "per_tensor.tflite")
    report = keras_dstee.export_tflite(model, path, quantize="int8", representative_data=x[:200], per_channel=False)
    assert report["quantization"] == "full_int8" and report["per_channel"] is False
    weights = _weights(path)
    assert len(weights) == 4 and all(len(w["quantization_parameters"]["scales"]) == 1 for w in weights)
    assert abs(keras_dstee.evaluate_tflite(path, x, y) - _accuracy(model, x, y)) <= 0.05
    if BACKEND == "tensorflow":
        per_channel = keras_dstee.export_tflite(
            model, str(tmp_path / "per_channel.tflite"), quantize="int8", representative_data=x[:200]
        )
        assert per_channel["per_channel"] is True
        channels = [len(w["quantization_parameters"]["scales"]) for w in _weights(per_channel["path"])]
        assert channels == [w["shape"][0] for w in weights]  # one scale per output channel
        # A float32 scale per extra channel, for the weight and again for
        # its bias (zero points, all 0, are stored once per length).
        assert per_channel["bytes"] - report["bytes"] >= 2 * 4 * (sum(channels) - len(channels))


@tensorflow_only  # every backend's float export: test_export.py
def test_evaluate_tflite_float_equals_keras(trained, tmp_path):
    model, x, y = trained
    report = keras_dstee.export_tflite(model, str(tmp_path / "f.tflite"))
    assert report["quantization"] == "float32"
    np.testing.assert_allclose(tflite_runner.predict_tflite(report["path"], x, batch_size=50), to_numpy(model(x)), atol=1e-5)
    one_hot = np.eye(5)[y]
    assert keras_dstee.evaluate_tflite(report["path"], x, one_hot) == _accuracy(model, x, y)
    with pytest.raises(ValueError, match="labels"):
        keras_dstee.evaluate_tflite(report["path"], x, y[:10])


def test_calibration_samples_from_every_kind_of_data():
    x, y = _learnable(64)
    shapes = [(None, 8, 8, 3)]
    expected = x[:40]
    tf = pytest.importorskip("tensorflow")
    kinds = {
        "array": x,
        "batches with labels": ((x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)),
        "single samples": (x[i] for i in range(64)),
        "tf.data": tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
    }
    for kind, data in kinds.items():
        samples = calibration.calibration_samples(data, shapes, limit=40)
        assert len(samples) == 1, kind
        np.testing.assert_array_equal(samples[0], expected, err_msg=kind)
    for data, message in [
        (np.zeros((4, 8, 8, 1), "float32"), r"shape \(8, 8, 3\).*\(4, 8, 8, 1\)"),
        ((v for v in []), "no samples"),
        (3.0, "NumPy array, a tf.data.Dataset or a generator"),
    ]:
        with pytest.raises(ValueError, match=message):
            calibration.calibration_samples(data, shapes)


def _block_mlp(block_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype("float32")
    y = rng.integers(0, 8, size=256)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(16)]
    )
    compile_model(model)
    callback = keras_dstee.DSTEE(sparsity=0.9, distribution="uniform", block_size=block_size, update_freq=2, seed=1)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    return keras_dstee.strip(model), x


@tensorflow_only
def test_int8_sparse_kernel_needs_16x1_blocks(tmp_path):
    model, x = _block_mlp((16, 1))
    report = keras_dstee.export_tflite(
        model, str(tmp_path / "b16.tflite"), quantize="int8", representative_data=x, optimize_for="latency"
    )
    assert [row["storage"] for row in report["layers"]] == ["sparse kernel"] * 3 and report["accelerated"] == 3
    assert report["int8_stored_dense"] == [] and report["bytes"] < 0.5 * report["dense_bytes"]
    model, x = _block_mlp((4, 1))
    with pytest.warns(UserWarning, match="not faster than dense"):
        report = keras_dstee.export_tflite(
            model, str(tmp_path / "b4.tflite"), quantize="int8", representative_data=x, optimize_for="latency"
        )
    assert report["accelerated"] == 0
    assert all("block_size=(16, 1)" in row["reason"] for row in report["layers"])


@tensorflow_only
def test_dynamic_range_int8_on_the_sparse_kernel_computes_what_keras_does(tmp_path):
    """Dynamic-range int8 weights with (16, 1) blocks run on TFLite's sparse
    kernel in the default interpreter and compute what Keras does (with the
    converter's op version, XNNPack read them as dense: garbage)."""
    model, x = _block_mlp((16, 1))
    path = str(tmp_path / "dynamic.tflite")
    report = keras_dstee.export_tflite(model, path, quantize="int8", optimize_for="latency")
    assert report["quantization"] == "dynamic_range_int8" and report["accelerated"] == 3
    expected = to_numpy(model(x[:64]))
    got = tflite_runner.predict_tflite(path, x[:64])
    assert np.max(np.abs(got - expected)) <= 0.05 * np.max(np.abs(expected))
    assert tflite_runner.default_interpreter_deviation(open(path, "rb").read()) < 0.01


@tensorflow_only
def test_a_file_the_default_interpreter_computes_wrongly_is_refused(tmp_path, monkeypatch):
    model, _ = _block_mlp((4, 1))
    monkeypatch.setattr(tflite_runner, "default_interpreter_deviation", lambda data: 2.0)
    with pytest.raises(RuntimeError, match="200.0% of the largest output"):
        keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"))
    assert not os.listdir(tmp_path)


def _converted_sparse(model, x, folder, int8=True):
    """The converter's sparse file (full int8, or float32), before any rewrite."""
    import tensorflow as tf

    model.export(folder, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(folder)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if int8:
        converter.optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.representative_dataset = calibration.representative_dataset([x[:64]])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def _builtin_outputs(contents, x):
    outputs = []
    for content in contents:
        interpreter = tflite_runner.open_interpreter(content, builtin_only=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return outputs


@tensorflow_only
def test_rewrite_for_the_default_interpreter_is_exact(trained, tmp_path):
    """The converter's sparse int8 file fails in the default delegate; the
    rewritten one runs there, and on TFLite's builtin kernels both give
    bit-identical outputs."""
    model, x, _ = trained
    original = _converted_sparse(model, x, str(tmp_path / "saved"))
    assert "XNNPack" in tflite_runner.default_interpreter_error(original)
    rewritten, names = tflite_rewrite.densify_int8_weights(original)
    assert len(names) == 4 and tflite_runner.default_interpreter_error(rewritten) is None
    # Only the weights of the node the interpreter names.
    interpreter = tflite_runner.open_interpreter(original, builtin_only=True)
    ops = interpreter._get_ops_details()
    densified = {op["outputs"][0] for op in ops if op["op_name"] == "DENSIFY"}
    node = next(op["index"] for op in ops if set(op["inputs"]) & densified)
    one, named = tflite_rewrite.densify_int8_weights(original, node)
    assert len(named) == 1 and named[0] in names
    assert sum(op["op_name"] == "DENSIFY" for op in tflite_runner.open_interpreter(one)._get_ops_details()) == 3
    outputs = _builtin_outputs([original, rewritten, one], x[:1])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def _zero_point_vectors(content):
    """Per tensor with zero points: (where the vector is stored, its values)."""
    from tensorflow.lite.python import schema_py_generated as schema

    graph = schema.Model.GetRootAs(bytearray(content), 0).Subgraphs(0)
    vectors = []
    for i in range(graph.TensorsLength()):
        q = graph.Tensors(i).Quantization()
        if q is not None and q.ZeroPointLength():
            # 10: the vtable slot of `zero_point` (field 3) in the schema.
            vectors.append((q._tab.Vector(q._tab.Offset(10)), q.ZeroPointAsNumpy().tobytes()))
    return vectors


@tensorflow_only
def test_quantization_is_stored_once(trained, tmp_path):
    """Each weight `DENSIFY` expands loses its copy of the expanded tensor's
    per-channel scales and zero points (12 bytes a channel), equal zero
    point vectors are stored once, and the outputs stay bit-identical."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model, x, _ = trained
    original = _converted_sparse(model, x, str(tmp_path / "saved"))
    once = tflite_rewrite.quantization_stored_once(original)

    def densified(content):
        tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
        graph = tflite.subgraphs[0]
        ops = tflite_rewrite._ops(tflite, graph, schema.BuiltinOperator.DENSIFY)
        return [(graph.tensors[op.inputs[0]].quantization, graph.tensors[op.outputs[0]].quantization) for op in ops]

    before, after = densified(original), densified(once)
    assert len(before) == len(after) == 4
    channels = sum(len(weight.scale) for weight, _ in before)
    assert all(weight is None and len(expanded.scale) > 0 for weight, expanded in after)
    # The converter stores every zero-point vector apart; here each distinct one once.
    stored, shared = _zero_point_vectors(original), _zero_point_vectors(once)
    assert len({where for where, _ in stored}) == len(stored)
    assert len({where for where, _ in shared}) == len({values for _, values in shared}) < len(shared)
    repeated = sum(len(values) for _, values in shared) - sum(len(values) for values in {values for _, values in shared})
    assert len(original) - len(once) >= 12 * channels + repeated
    outputs = _builtin_outputs([original, once], x[:1])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert tflite_rewrite.quantization_stored_once(once) is once  # nothing left to drop


def _wide_to_narrow_conv():
    """A 1x1 conv from 512 channels to 64, 90 % of its weights masked."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 8))
    hidden = keras.layers.Conv2D(512, 1, activation="relu")(inputs)
    hidden = keras.layers.Conv2D(64, 1, activation="relu", name="narrowing")(hidden)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(inputs, outputs)
    densities = {v.path: 0.1 for v in model.trainable_variables if v.path.endswith("kernel")}
    optimizer = keras_dstee.SparseOptimizer(keras.optimizers.SGD(), densities, method="static", seed=0)
    optimizer.build(model.trainable_variables)
    optimizer.install()
    return model


def _expanded_weights(content):
    """Per weight a `DENSIFY` op expands, by its shape: its sparsity
    parameters, how many values it stores, the expanded tensor's index."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    graph = tflite.subgraphs[0]
    weights = {}
    for op in tflite_rewrite._ops(tflite, graph, schema.BuiltinOperator.DENSIFY):
        weight = graph.tensors[op.inputs[0]]
        itemsize = 4 if weight.type == schema.TensorType.FLOAT32 else 1
        stored = len(tflite.buffers[weight.buffer].data) // itemsize
        weights[tuple(graph.tensors[op.outputs[0]].shape)] = (weight.sparsity, stored, int(op.outputs[0]))
    return weights


@tensorflow_only
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_sparse_indices_take_the_narrowest_axis(tmp_path, quantize):
    """The converter compresses a conv kernel along its input channels
    (uint16 indices for 512 of them); the rewrite compresses the 1x1 conv
    from 512 to 64 along its 64 output channels (uint8), stores the same
    values, and the outputs stay bit-identical in both interpreters."""
    from tensorflow.lite.python import schema_py_generated as schema

    from keras_dstee.deploy import export

    model = _wide_to_narrow_conv()
    x = np.random.default_rng(0).normal(size=(64, 4, 4, 8)).astype("float32")
    original = export._runnable(_converted_sparse(model, x, str(tmp_path / "saved"), int8=quantize == "int8"))[0]
    narrow = tflite_rewrite.narrowest_sparse_indices(original)

    before, after = _expanded_weights(original), _expanded_weights(narrow)
    assert before.keys() == after.keys()
    narrowing, stored, expanded = before[(64, 1, 1, 512)]
    nonzero = int(np.count_nonzero(to_numpy(model.get_layer("narrowing").kernel)))
    assert nonzero - 20 <= stored <= nonzero  # int8 drops the weights that round to 0
    assert list(narrowing.traversalOrder) == [0, 1, 2, 3]
    assert narrowing.dimMetadata[3].arrayIndicesType == schema.SparseIndexVector.Uint16Vector
    narrowed, stored_after, _ = after[(64, 1, 1, 512)]
    assert list(narrowed.traversalOrder) == [1, 2, 3, 0] and stored_after == stored
    assert narrowed.dimMetadata[3].arrayIndicesType == schema.SparseIndexVector.Uint8Vector
    assert narrowed.dimMetadata[3].arrayIndices.values.nbytes == stored  # was 2 bytes a value
    def index_bytes(sparsity):
        return sum(tflite_rewrite._index_bytes(level) for level in sparsity.dimMetadata)

    # Every weight: the same values stored, in no more index bytes.
    for shape, (sparsity, count, _) in before.items():
        assert after[shape][1] == count and index_bytes(after[shape][0]) <= index_bytes(sparsity)
    assert len(original) - len(narrow) >= stored - 2 * 512
    # The same expanded weight, the same outputs.
    np.testing.assert_array_equal(*[tflite_runner.tensor_values(c, [expanded])[0] for c in (original, narrow)])
    np.testing.assert_array_equal(*_builtin_outputs([original, narrow], x[:1]))
    np.testing.assert_array_equal(*[tflite_runner.predict_tflite(c, x[:8]) for c in (original, narrow)])
    assert tflite_rewrite.narrowest_sparse_indices(narrow) is narrow  # nothing left to narrow
    # `export_tflite` writes it this way.
    kwargs = {"quantize": "int8", "representative_data": x} if quantize else {}
    keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"), **kwargs)
    written = _expanded_weights(open(tmp_path / "m.tflite", "rb").read())
    assert list(written[(64, 1, 1, 512)][0].traversalOrder) == [1, 2, 3, 0]


def test_onnx_matches_keras_and_keeps_the_zeros(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    model, x, _ = trained
    report = keras_dstee.export_onnx(model, str(tmp_path / "m.onnx"))
    assert os.path.getsize(report["path"]) == report["bytes"]
    session = ort.InferenceSession(report["path"])
    outputs = session.run(None, {session.get_inputs()[0].name: x[:16]})[0]
    np.testing.assert_allclose(outputs, to_numpy(model(x[:16])), atol=1e-4)
    # Every zero of the kernels is in the file's initializers.
    kernel_zeros = sum(int(np.sum(to_numpy(w) == 0)) for w in model.trainable_weights if len(w.shape) > 1)
    stored_zeros = sum(int(np.sum(numpy_helper.to_array(t) == 0)) for t in onnx.load(report["path"]).graph.initializer)
    assert stored_zeros >= kernel_zeros > 0


def test_refusals_write_nothing(trained, tmp_path, monkeypatch):
    model, x, _ = trained
    path = tmp_path / "out.tflite"
    for kwargs, message in [
        ({"representative_data": x}, "quantize='int8'"),
        ({"quantize": "int8", "io_dtype": "int8"}, "representative_data"),
        ({"quantize": "int8", "representative_data": x, "io_dtype": "uint8"}, "io_dtype"),
        ({"quantize": "int8", "representative_data": x[..., :1]}, "shape"),
        ({"quantize": "int8", "per_channel": False}, "representative_data"),
        ({"quantize": "int8", "representative_data": x, "per_channel": "no"}, "per_channel"),
        ({"quantize": "int8", "activation_ranges": "minmax"}, "representative_data"),
        ({"quantize": "int8", "representative_data": x, "activation_ranges": "percentile"}, "activation_ranges"),
    ]:
        with pytest.raises(ValueError, match=message):
            keras_dstee.export_tflite(model, str(path), **kwargs)
        assert not path.exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "tf2onnx") else real(name, *a))
    with pytest.raises(ImportError, match=r"keras-dstee\[onnx\]"):
        keras_dstee.export_onnx(model, str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


@tensorflow_only
def test_cli_full_int8_and_onnx(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    model, x, _ = trained
    source = str(tmp_path / "m.keras")
    model.save(source)
    np.save(tmp_path / "x.npy", x[:100])
    out = str(tmp_path / "m.tflite")
    assert cli.main(["export", source, "--tflite", out, "--int8", "--representative-data", str(tmp_path / "x.npy")]) == 0
    assert "quantization: full_int8" in capsys.readouterr().out
    assert cli.main(["export", source, "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert os.path.isfile(tmp_path / "m.onnx")
    with pytest.raises(SystemExit):
        cli.main(["export", source, "--tflite", out, "--representative-data", str(tmp_path / "x.npy")])
    assert "add --int8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", source, "--tflite", out, "--int8", "--per-tensor"])
    assert "--representative-data" in capsys.readouterr().err


@tensorflow_only
def test_latency_export_keeps_dense_where_the_sparse_kernel_loses(tmp_path):
    """A Dense layer over 16 tokens is stored dense (the sparse kernel is a
    matrix-vector product); the one after Flatten, one row, stays sparse."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16, 64)).astype("float32")
    y = rng.integers(0, 10, size=128)
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((16, 64)), layers.Dense(128, activation="relu"), layers.Flatten(), layers.Dense(64), layers.Dense(10)]
    )
    compile_model(model)
    callback = keras_dstee.DSTEE(sparsity=0.9, distribution="uniform", block_size=(4, 1), update_freq=2, seed=1)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    keras_dstee.strip(model)
    report = keras_dstee.export_tflite(model, str(tmp_path / "tokens.tflite"), optimize_for="latency")
    storage = [row["storage"] for row in report["layers"]]
    assert storage == ["dense (faster here)", "sparse kernel", "sparse kernel"], report["layers"]
    assert "16 rows per sample" in report["layers"][0]["reason"] and report["accelerated"] == 2
    np.testing.assert_allclose(tflite_runner.predict_tflite(report["path"], x[:8]), to_numpy(model(x[:8])), atol=1e-5)
    # For size, every weight keeps the sparse format.
    sized = keras_dstee.export_tflite(model, str(tmp_path / "size.tflite"))
    assert sized["bytes"] < report["bytes"]
