"""What a new user hit in 0.2.0 (issue 37), each pinned so it cannot come
back: exports of an unslimmed channel-trained model and of subclassed
models, calibration and evaluation inputs refused by name, paths checked
before converting, a quiet export, a CLI that answers without Keras, and
the examples' torch threads."""

import os
import subprocess
import sys
import textwrap
import time
import warnings

import keras
import numpy as np
import pytest
from helpers import only_on
from helpers import to_numpy

import keras_dstee
from keras_dstee import calibration
from keras_dstee import cli
from keras_dstee.deploy import tflite_runner

pytest.importorskip("ai_edge_litert.interpreter")
BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = keras.layers


def _conv_bn_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(8, 3), L.BatchNormalization(), L.ReLU(),
        L.Conv2D(8, 3), L.BatchNormalization(), L.ReLU(),
        L.Flatten(), L.Dense(5),
    ])


@pytest.fixture(scope="module")
def channel_trained():
    """A conv+BN model trained with channels removed, not slimmed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=64)
    model = _conv_bn_model()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = keras_dstee.DSTEE(sparsity=0.9, channel_sparsity=0.5, update_freq=2, seed=0)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    assert to_numpy(callback.optimizer.channels.alive).min() == 0  # channels did go
    return model, x


def _non_string_keyed_dicts(obj, seen, path="model"):
    """Paths of the dicts whose non-string keys hold trackable values
    (variables, layers), among the attributes of the objects reachable from
    `obj`: TensorFlow tracks them on assignment and cannot save them."""
    import tensorflow as tf

    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return []
    seen.add(id(obj))
    found = []
    for name, value in vars(obj).items():
        mapping = isinstance(value, dict) or type(value).__name__ == "_DictWrapper"
        trackable = mapping and [k for k, v in value.items() if isinstance(v, tf.__internal__.tracking.Trackable)]
        if trackable and any(not isinstance(k, str) for k in trackable):
            found.append(f"{path}.{name}")
        children = value.values() if mapping else value if isinstance(value, (list, tuple)) else [value]
        for child in children:
            if child is not None and type(child).__module__.split(".")[0] in ("keras", "keras_dstee"):
                found += _non_string_keyed_dicts(child, seen, f"{path}.{name}")
    return found


def test_an_unslimmed_channel_trained_model_exports_everywhere(channel_trained, tmp_path):
    model, x = channel_trained
    if BACKEND == "tensorflow":
        assert _non_string_keyed_dicts(model, set()) == []
        # The check finds what 0.2.0 had: the optimizer's channel variables by position.
        probe = keras.optimizers.SGD()
        probe.lookup = {0: keras.Variable(1.0)}
        assert _non_string_keyed_dicts(probe, set(), "probe") == ["probe.lookup"]
    expected = to_numpy(model(x[:8], training=False))
    report = keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"))
    got = tflite_runner.predict_tflite(report["path"], x[:8])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    keras_dstee.export_saved_model(model, str(tmp_path / "saved"))
    assert os.path.isfile(tmp_path / "saved" / "saved_model.pb")
    if BACKEND != "jax":  # jax's ONNX goes through the same worker as its TFLite
        pytest.importorskip("onnx")
        keras_dstee.export_onnx(model, str(tmp_path / "m.onnx"))
        assert os.path.getsize(tmp_path / "m.onnx") > 0
    # Saved and loaded back (compiled: the optimizer comes back too).
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    keras_dstee.export_tflite(loaded, str(tmp_path / "loaded.tflite"))
    got = tflite_runner.predict_tflite(str(tmp_path / "loaded.tflite"), x[:8])
    np.testing.assert_allclose(got, expected, atol=1e-4)


_MODULE = '''
import keras


@keras.saving.register_keras_serializable("first_use")
class Registered(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3)
        self.flat = keras.layers.Flatten()
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.flat(self.conv(x)))


class Unregistered(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(x)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's own model classes, importable by name."""
    name = f"first_use_models_{BACKEND}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


@pytest.mark.parametrize("kind", ["Registered", "Unregistered"])
def test_a_subclassed_model_from_a_module_exports_on_every_backend(user_module, kind, tmp_path):
    keras.utils.set_random_seed(0)
    model = getattr(user_module, kind)()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3) if kind == "Registered" else (4, 6)).astype("float32")
    expected = to_numpy(model(x))
    path = str(tmp_path / "sub.tflite")
    keras_dstee.export_tflite(model, path)
    np.testing.assert_allclose(tflite_runner.predict_tflite(path, x), expected, atol=1e-5)


def test_a_class_another_process_cannot_import_is_refused_up_front(tmp_path):
    class Local(keras.Model):  # like a class in the user's script: no module to import
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(x)

    model = Local()
    x = np.ones((2, 6), "float32")
    expected = to_numpy(model(x))
    path = tmp_path / "local.tflite"
    if BACKEND == "tensorflow":  # converts in this process: nothing to import
        keras_dstee.export_tflite(model, str(path))
        np.testing.assert_allclose(tflite_runner.predict_tflite(str(path), x), expected, atol=1e-5)
        return
    with pytest.raises(ValueError) as error:
        keras_dstee.export_tflite(model, str(path))
    first_line = str(error.value).splitlines()[0]
    assert "class 'Local' is defined inside a function" in first_line
    assert "Move the class into a module" in first_line and "KERAS_BACKEND=tensorflow" in first_line
    assert not path.exists()
    np.testing.assert_array_equal(to_numpy(model(x)), expected)  # the model is untouched


@pytest.mark.parametrize(
    "data, words",
    [
        (np.zeros((0, 8, 8, 3), "float32"), "`representative_data` holds no samples"),
        ([0.1, 0.2], r"must hold input samples of shape \(8, 8, 3\).*shape \(2,\)"),
        (np.full((4, 8, 8, 3), np.inf, "float32"), r"4 sample\(s\) with NaN or inf"),
        (np.zeros((4, 5, 5, 3), "float32"), r"shape \(8, 8, 3\).*\(4, 5, 5, 3\)"),
        (np.full((4, 8, 8, 3), "a"), "must hold numbers"),
    ],
    ids=["empty", "numbers", "inf", "shape", "strings"],
)
def test_bad_calibration_data_is_refused_by_name(data, words, tmp_path):
    model = _conv_bn_model()
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=words):
        keras_dstee.export_tflite(model, str(path), quantize="int8", representative_data=data)
    assert not path.exists()


def test_calibration_takes_one_unbatched_sample():
    sample = np.random.default_rng(0).normal(size=(8, 8, 3)).astype("float32")
    (samples,) = calibration.calibration_samples(sample, [(None, 8, 8, 3)])
    assert samples.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(samples[0], sample)
    # Integer inputs (token ids) are not checked for NaN and stay integers.
    (ids,) = calibration.calibration_samples(np.arange(12).reshape(3, 4), [(None, 4)])
    assert ids.dtype.kind == "i" and ids.shape == (3, 4)


@only_on("tensorflow", "the interpreter is the same on every backend")
def test_evaluate_tflite_refuses_samples_of_another_shape(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    outputs = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(inputs))  # would run at any size
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "conv.tflite")
    keras_dstee.export_tflite(model, path)
    labels = np.zeros(4, "int32")
    assert 0 <= keras_dstee.evaluate_tflite(path, np.zeros((4, 8, 8, 3), "float32"), labels) <= 1
    with pytest.raises(ValueError, match=r"takes samples of shape \(8, 8, 3\).*\(16, 16, 3\)"):
        keras_dstee.evaluate_tflite(path, np.zeros((4, 16, 16, 3), "float32"), labels)


@pytest.mark.parametrize("value", ["model.keras", None, 3])
def test_functions_taking_a_model_say_so(value):
    calls = {
        "summary": lambda: keras_dstee.summary(value),
        "slim": lambda: keras_dstee.slim(value),
        "export_tflite": lambda: keras_dstee.export_tflite(value, "m.tflite"),
        "export_saved_model": lambda: keras_dstee.export_saved_model(value, "saved"),
        "recalibrate_batch_norm": lambda: keras_dstee.recalibrate_batch_norm(value, np.zeros((4, 2))),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"`{name}` takes a Keras model") as error:
            call()
        assert ("keras.saving.load_model" in str(error.value)) == isinstance(value, str)


def test_output_paths_are_checked_before_converting(tmp_path):
    model = _conv_bn_model()
    folder = tmp_path / "existing"
    folder.mkdir()
    with pytest.raises(ValueError, match="is an existing folder"):
        keras_dstee.export_tflite(model, str(folder))
    with pytest.raises(ValueError, match=r"ends in '.onnx', the suffix of ONNX files.*'.tflite'"):
        keras_dstee.export_tflite(model, str(tmp_path / "m.onnx"))
    assert sorted(os.listdir(tmp_path)) == ["existing"]
    if BACKEND == "tensorflow":  # an unknown suffix is written, with a warning
        with pytest.warns(UserWarning, match="whose suffix is not '.tflite'"):
            keras_dstee.export_tflite(model, str(tmp_path / "m.bin"))
        assert os.path.isfile(tmp_path / "m.bin")
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="is an existing folder"):
        keras_dstee.export_onnx(model, str(folder))
    with pytest.raises(ValueError, match=r"ends in '.tflite'.*'.onnx'"):
        keras_dstee.export_onnx(model, str(tmp_path / "m.tflite"))


@only_on("tensorflow", "the converters run under TensorFlow on every backend")
def test_an_export_keeps_the_converters_output_out_of_the_log(tmp_path, capfd):
    model = _conv_bn_model()
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"), quantize="int8", representative_data=x)
        keras_dstee.export_onnx(model, str(tmp_path / "m.onnx"))
    out, err = capfd.readouterr()
    assert "fully_quantize" not in out + err and "XNNPACK" not in out + err, (out + err)[:500]
    assert not [w for w in caught if "np.object" in str(w.message)]


def test_the_onnx_input_is_named_after_the_models_input_layer(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = _conv_bn_model()
    keras_dstee.export_onnx(model, str(tmp_path / "fresh.onnx"))
    model.save(tmp_path / "m.keras")
    keras_dstee.export_onnx(keras.saving.load_model(tmp_path / "m.keras"), str(tmp_path / "loaded.onnx"))
    names = [[i.name for i in onnx.load(tmp_path / f"{f}.onnx").graph.input] for f in ("fresh", "loaded")]
    input_layer = model.get_config()["layers"][0]["config"]["name"]  # what the .keras file keeps
    assert input_layer.startswith("input_layer")
    assert names == [[input_layer], [input_layer]]


@only_on("tensorflow", "the command line is backend-independent")
def test_the_cli_answers_without_keras_and_errors_on_one_line(channel_trained, tmp_path):
    # --help and a wrong flag: no Keras import, exit code 2.
    probe = (
        "import sys, keras_dstee_cli\n"
        "for argv in (['export', '--help'], ['export', 'm.keras', '--tflite', 'x.tflite', '--io-dtype', 'int8']):\n"
        "    try:\n"
        "        keras_dstee_cli.main(argv)\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code)\n"
        "print('keras imported:', 'keras' in sys.modules)\n"
    )
    start = time.time()
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert time.time() - start < 30
    assert "ONNX" in result.stdout and "--slim" in result.stdout  # export --help
    assert "exit 0\nexit 2\nkeras imported: False" in result.stdout, result.stdout + result.stderr
    assert "--io-dtype int8 needs full-integer int8" in result.stderr
    # After parsing: a wrong-shape .npy is one line and exit code 2.
    model, x = channel_trained
    source = str(tmp_path / "m.keras")
    model.save(source)
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5, 5, 3), "float32"))
    argv = ["export", source, "--tflite", str(tmp_path / "m.tflite"), "--int8",
            "--representative-data", str(tmp_path / "wrong.npy")]
    result = subprocess.run([sys.executable, "-m", "keras_dstee.cli", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, KERAS_BACKEND="tensorflow"), check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: `representative_data` must hold input samples of shape (8, 8, 3)" in result.stderr
    # --slim exports the model without its removed channels: a smaller file.
    assert cli.main(["export", source, "--tflite", str(tmp_path / "full.tflite"), "--dense", "--json"]) == 0
    assert cli.main(["export", source, "--tflite", str(tmp_path / "slim.tflite"), "--dense", "--slim", "--json"]) == 0
    assert os.path.getsize(tmp_path / "slim.tflite") < os.path.getsize(tmp_path / "full.tflite")


@only_on("jax", "imports are backend-independent")
def test_nothing_imports_keras_core():
    """keras-cv brings keras-core 0.1.7 along; the library never loads it."""
    probe = (
        "import sys, numpy as np, keras, keras_dstee\n"
        "model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(2)])\n"
        "model.compile('sgd', 'mse')\n"
        "model.fit(np.ones((16, 6)), np.ones((16, 2)), epochs=2, verbose=0,\n"
        "          callbacks=[keras_dstee.DSTEE(sparsity=0.5, update_freq=1)])\n"
        "keras_dstee.summary(model, print_fn=lambda line: None)\n"
        "print('keras_core' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, KERAS_BACKEND=BACKEND), check=False)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr[-2000:]


@only_on("jax", "the runner's own options")
def test_run_all_help_shows_its_own_options():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "run_all.py"), "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "--jobs" in result.stdout and "=====" not in result.stdout


@only_on("torch", "torch's threads")
def test_examples_give_torch_one_thread_per_free_core(monkeypatch):
    import torch

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import runtime
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
    free = runtime.free_cores(0.05)
    assert free is None or 0 <= free <= len(os.sched_getaffinity(0)) + 1e-6
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        monkeypatch.setattr(runtime, "free_cores", lambda: 0.2)  # a busy machine
        runtime.torch_threads_for_free_cores()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user chose: untouched
        runtime.torch_threads_for_free_cores()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@only_on("jax", "file descriptors are the same on every backend")
def test_quiet_passes_warnings_and_failures_through(monkeypatch, capfd):
    from keras_dstee.deploy import quiet

    with pytest.warns(UserWarning, match="still reaches the user"):
        with quiet.quiet():
            os.write(2, b"native chatter\n")
            warnings.warn("still reaches the user", UserWarning, stacklevel=1)
    assert "native chatter" not in capfd.readouterr().err
    with pytest.raises(RuntimeError, match="conversion failed"):
        with quiet.quiet():
            os.write(2, b"the converter's last words\n")
            raise RuntimeError("conversion failed")
    assert "the converter's last words" in capfd.readouterr().err  # shown on failure
    # A process without standard streams: the block still runs.
    with monkeypatch.context() as patched:
        patched.setattr(os, "dup", lambda fd: (_ for _ in ()).throw(OSError("bad file descriptor")))
        with quiet.quiet():
            ran = True
    assert ran
