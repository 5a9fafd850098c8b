"""Each paper-setup example runs end to end (`--smoke`), offline, and writes
its outputs. CIFAR examples read ../shared/data/cifar10.npz; the ImageNet
example reads a small folder of real images written from that file."""

import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tomllib
from helpers import only_on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.path.join(ROOT, "..", "shared", "data", "cifar10.npz")
OUTPUTS = {"log.csv", "summary.txt", "model.keras", "model.tflite", "curves.png", "results.json"}

needs_data = pytest.mark.skipif(not os.path.isfile(CIFAR10), reason="../shared/data/cifar10.npz missing")
BACKEND = keras.backend.backend()
# What does not depend on the backend (argument parsing, a missing folder)
# runs once, on JAX, to keep the suite short.
backend_independent = pytest.mark.skipif(BACKEND != "jax", reason="the same on every backend: runs on jax")


def _environment(**extra):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), **extra)
    # Two host devices, so `--distribute auto` runs its distributed path.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["KERAS_DSTEE_CPU_DEVICES"] = "2"
    return env


def _run(script, args, out, **env):
    command = [sys.executable, os.path.join(ROOT, "examples", script), "--smoke", "--out", str(out), *args]
    start = time.time()
    result = subprocess.run(
        command, cwd=ROOT, env=_environment(**env), capture_output=True, text=True, timeout=900, check=False
    )
    print(f"{script} --smoke on {keras.backend.backend()}: {time.time() - start:.1f} s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # The pipelines shuffle themselves; Keras's warning would only confuse.
    assert "shuffle=True" not in result.stdout + result.stderr
    assert OUTPUTS <= set(os.listdir(out))
    # The smoke run builds the same architecture at width 1/8: a few MB.
    assert os.path.getsize(os.path.join(out, "model.keras")) < 8e6
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@needs_data
@pytest.mark.parametrize(
    "script",
    [
        # One smoke per backend, to keep CI short: ResNet-50 CIFAR on torch,
        # VGG-19 with channels on tensorflow, ImageNet ResNet-50 on jax.
        pytest.param("resnet50_cifar10.py", marks=only_on("torch", "the ResNet-50 CIFAR smoke")),
        pytest.param("vgg19_cifar100.py", marks=only_on("tensorflow", "the VGG-19 CIFAR smoke with channels")),
    ],
)
def test_cifar_example(script, tmp_path):
    # VGG also removes half of every layer's channels (from a tenth of the
    # run on) and writes the slimmed model.
    channels = ["--channel-sparsity", "0.5", "--min-channels", "1", "--channel-begin", "0.1"]
    channels = channels if script.startswith("vgg") else []
    results = _run(script, ["--data", CIFAR10, "--sparsity", "0.9", *channels], tmp_path / "out")
    assert results["backend"] == keras.backend.backend()
    assert results["kernel_sparsity"] == pytest.approx(0.9, abs=0.005)
    assert results["tflite_bytes"] < 0.3 * results["tflite_dense_bytes"]
    if channels:
        # The schedule ends at the run's last mask update: half the channels gone.
        assert results["channel_begin"] == 0.1
        assert 0 <= results["test_accuracy_stale_bn"] <= 1  # before recalibrate_batch_norm
        assert results["live_channels"] <= 0.5
        assert results["slim_params"] < 0.5 * results["params"]
        assert results["slim_tflite_bytes"] < results["tflite_bytes"]
        slimmed = keras.saving.load_model(str(tmp_path / "out" / "model_slim.keras"))
        assert slimmed.count_params() == results["slim_params"]
        # `--min-channels 1`: every conv lost half its filters, none more.
        sparse = keras.saving.load_model(str(tmp_path / "out" / "model.keras"))
        filters = {layer.name: layer.filters for layer in sparse.layers if isinstance(layer, keras.layers.Conv2D)}
        slim_filters = {layer.name: layer.filters for layer in slimmed.layers if layer.name in filters}
        assert slim_filters == {name: n // 2 for name, n in filters.items()}


@needs_data
@pytest.mark.skipif(BACKEND == "jax", reason="on jax the same script runs three times in the kill-and-resume test")
def test_block_sparse_mlp_example(tmp_path):
    results = _run("block_sparse_mlp_cifar10.py", ["--data", CIFAR10, "--sparsity", "0.9"], tmp_path / "out")
    assert results["kernel_sparsity"] == pytest.approx(0.9, abs=0.005)
    # `--distribute auto` used both host devices (torch: one, by design).
    assert results["devices"] == (1 if keras.backend.backend() == "torch" else 2)
    assert results["images_per_second"] > 0 and results["dtype_policy"] == "float32"
    assert os.listdir(tmp_path / "out" / "tensorboard")
    # Every Dense layer of the MLP runs on TFLite's sparse kernel, however
    # ERK spreads the budget (a layer it keeps dense is not counted).
    assert results["tflite_accelerated_layers"] >= 3


@needs_data
@only_on("jax", "the ImageNet smoke (the README runs it on jax; ResNet-50 CIFAR smokes on torch)")
def test_imagenet_example(tmp_path):
    from PIL import Image

    data = np.load(CIFAR10)
    # 5 validation images at batch 4: a last batch of 1, which left one of
    # the two smoke replicas empty under MirroredStrategy (it crashed).
    for split, x, y, per_class in (
        ("train", data["x_train"], data["y_train"], (6, 6, 6)),
        ("val", data["x_test"], data["y_test"], (2, 2, 1)),
    ):
        for label in range(3):
            folder = tmp_path / "images" / split / str(data["class_names"][label])
            folder.mkdir(parents=True)
            for i in np.flatnonzero(y == label)[: per_class[label]]:
                Image.fromarray(x[i]).save(folder / f"{i}.png")
    results = _run("resnet50_imagenet.py", ["--data", str(tmp_path / "images"), "--method", "rigl"], tmp_path / "out")
    assert results["method"] == "rigl" and results["kernel_sparsity"] == pytest.approx(0.9, abs=0.005)


@backend_independent
def test_offline_without_data_fails_fast(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    command = [sys.executable, os.path.join(ROOT, "examples", "resnet50_imagenet.py"), "--data", str(tmp_path / "nope")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0 and "no such folder" in result.stderr


@backend_independent
@pytest.mark.parametrize(
    "script", ["resnet50_cifar10.py", "vgg19_cifar100.py", "resnet50_imagenet.py", "block_sparse_mlp_cifar10.py", "quickstart.py"]
)
def test_help_shows_the_defaults(script):
    command = [sys.executable, os.path.join(ROOT, "examples", script), "--help"]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert "(default: 0.9)" in result.stdout  # --sparsity
    assert "(default: 0)" in result.stdout  # --seed
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", result.stdout)  # one default each
    if script == "vgg19_cifar100.py":
        assert "cifar10.npz" not in result.stdout and "prepare_cifar.py cifar100" in " ".join(result.stdout.split())


@backend_independent
def test_prepare_cifar_help():
    command = [sys.executable, os.path.join(ROOT, "examples", "prepare_cifar.py"), "--help"]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert "{cifar10,cifar100}" in result.stdout


def test_extras_install_what_the_examples_import():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert {"tensorflow-datasets", "importlib_resources", "tensorboard", "matplotlib"} <= set(extras["examples"])
    assert any("examples" in requirement for requirement in extras["all"])
    # The test extra includes the `all` extra (and `docs`).
    assert any("all" in requirement.split("[")[-1].rstrip("]").split(",") for requirement in extras["test"])


def test_a_missing_package_names_its_extra():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import common
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit, match=r"no_such_module.*keras-dstee\[examples\]"):
        common.require("no_such_module")


def test_imagenet_augmentation_is_the_papers():
    """Training crops are `size` x `size` and cover 8-100% of the image with
    aspect ratio 3/4-4/3; evaluation is the central crop of the image
    resized to 256 on its shorter side (for 224)."""
    tf = pytest.importorskip("tensorflow")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import imagenet_input
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, size=(300, 400, 3)).astype("uint8"))
    for _ in range(20):
        key = tf.constant(rng.integers(0, 2**31, size=2), "int64")
        assert tuple(imagenet_input.train_image(tf, image, 224, key).shape) == (224, 224, 3)
    # The crop box itself, with the ranges the example passes.
    for _ in range(50):
        _, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), min_object_covered=0.0,
            aspect_ratio_range=imagenet_input.ASPECT_RANGE, area_range=imagenet_input.AREA_RANGE,
            max_attempts=10, use_image_if_no_bounding_boxes=True,
        )
        h, w = int(size[0]), int(size[1])
        assert 0.08 * 300 * 400 * 0.95 <= h * w <= 300 * 400
    evaluated = imagenet_input.eval_image(tf, image, 224).numpy()
    resized = tf.image.resize(image, (256, 341)).numpy()  # shorter side 300 -> 256
    expected = (resized[16:240, 58:282] / 255.0 - imagenet_input.MEAN) / imagenet_input.STD
    np.testing.assert_allclose(evaluated, expected, atol=1e-5)


@needs_data
@pytest.mark.skipif(BACKEND != "jax", reason="resuming on each backend: test_saving.py; the example's own resume runs on jax")
def test_a_killed_run_resumes_to_the_same_model(tmp_path):
    """Killed after epoch 1 of 2 (as a preemption would), the same command
    continues from the backup and ends with the weights, hence the masks,
    of an uninterrupted run, with exact budgets."""
    args = ["--data", CIFAR10, "--sparsity", "0.9", "--block-size", "none"]
    script = os.path.join(ROOT, "examples", "block_sparse_mlp_cifar10.py")
    killed = subprocess.run(
        [sys.executable, script, "--smoke", "--out", str(tmp_path / "resumed"), *args],
        cwd=ROOT, env=_environment(KERAS_DSTEE_EXAMPLE_STOP_AFTER_EPOCH="1"),
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert os.path.isfile(tmp_path / "resumed" / "backup" / "training_metadata.json")
    resumed = _run("block_sparse_mlp_cifar10.py", args, tmp_path / "resumed")
    whole = _run("block_sparse_mlp_cifar10.py", args, tmp_path / "whole")
    assert resumed["kernel_sparsity"] == whole["kernel_sparsity"] == pytest.approx(0.9, abs=0.005)
    with open(tmp_path / "resumed" / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 3  # header, epoch 1, epoch 2
    a = keras.saving.load_model(tmp_path / "resumed" / "model.keras", compile=False)
    b = keras.saving.load_model(tmp_path / "whole" / "model.keras", compile=False)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))


@needs_data
# On jax and torch every TFLite file (on jax the ONNX file too) comes from the
# same TensorFlow process (`tensorflow_worker.run`); torch writes ONNX
# its own way.
@pytest.mark.skipif(BACKEND == "jax", reason="the jax export path is torch's (a TensorFlow subprocess): runs on tensorflow and torch")
def test_deploy_example(tmp_path):
    """`deploy.py --smoke`: every artifact written, measured and tabled."""
    command = [sys.executable, os.path.join(ROOT, "examples", "deploy.py"), "--smoke", "--data", CIFAR10, "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(tmp_path / "deploy.json") as f:
        artifacts = {os.path.basename(a["path"]): a for a in json.load(f)["artifacts"]}
    expected = {"model.keras", "saved_model", "dense_float32.tflite", "float32.tflite", "dynamic_int8.tflite", "full_int8.tflite",
                "float32_slim.tflite", "dynamic_int8_slim.tflite", "full_int8_slim.tflite", "full_int8_per_tensor.tflite",
                "full_int8_minmax.tflite", "model.onnx"}
    assert set(artifacts) == expected
    # The float files compute what the Keras model does; slimming keeps it.
    keras_accuracy = artifacts["model.keras"]["accuracy"]
    assert artifacts["float32.tflite"]["accuracy"] == artifacts["float32_slim.tflite"]["accuracy"] == keras_accuracy
    assert artifacts["float32.tflite"]["bytes"] < 0.3 * artifacts["dense_float32.tflite"]["bytes"]
    assert artifacts["full_int8_per_tensor.tflite"]["bytes"] < artifacts["full_int8.tflite"]["bytes"]
    assert artifacts["float32_slim.tflite"]["latency_ms"] > 0 and (tmp_path / "deploy.png").stat().st_size > 0
    assert "| TFLite full int8 |" in (tmp_path / "deploy.md").read_text()
    assert artifacts["full_int8_minmax.tflite"]["activation_ranges"] == "minmax"
    assert 0 <= artifacts["full_int8.tflite"]["calibration_agreement"] <= 1
