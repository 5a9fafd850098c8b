"""The prepared GPU run passes its seconds-long CPU check, the exploration
study's table pairs DST-EE with RigL by seed, and the channel study's
control matches the weight budget."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_dstee

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.path.join(ROOT, "..", "shared", "data", "cifar10.npz")


def _benchmark_module(name):
    """Imports `benchmarks/<name>.py`; its `common` (the benchmarks' one)
    leaves `sys.modules` afterwards, so the examples' `common` stays free."""
    saved = sys.modules.pop("common", None)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)
        sys.modules.pop("common", None)
        if saved is not None:
            sys.modules["common"] = saved


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="gpu.sh runs on JAX")
@pytest.mark.skipif(not os.path.isfile(CIFAR10), reason="../shared/data/cifar10.npz missing")
def test_gpu_script_tiny(tmp_path):
    env = dict(os.environ, GPU_SH_TINY="1", PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), CIFAR10, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(tmp_path / "gpu_exploration.json") as f:
        runs = json.load(f)["runs"]
    assert sorted(r["variant"] for r in runs) == ["dstee", "rigl"]
    assert all(r["sparsity"] == 0.98 and abs(r["actual_sparsity"] - 0.98) < 1e-3 for r in runs)
    assert "| small_cnn | 0.98 | dstee |" in (tmp_path / "gpu_exploration.md").read_text()
    assert (tmp_path / "gpu_exploration.png").stat().st_size > 0
    with open(tmp_path / "gpu_training_cost.json") as f:
        cost = json.load(f)[0]
    assert cost["model"] == "small_cnn" and cost["backend"] == "jax"
    assert cost["rebuilds"] and cost["rebuilds"][-1]["channels_after"] < cost["rebuilds"][0]["channels_before"]
    assert cost["equivalence"] < 1e-5 and cost["dense_s"] > 0 and cost["shrink_s"] > 0
    assert "| jax | small_cnn |" in (tmp_path / "gpu_training_cost.md").read_text()


def test_paired_differences_are_by_seed():
    paired_table = _benchmark_module("exploration_regimes").paired_table

    def run(variant, seed, accuracy):
        return {"model": "m", "sparsity": 0.98, "variant": variant, "seed": seed, "test_accuracy": accuracy, "coverage": 0.1}

    runs = [run("rigl", 0, 0.50), run("rigl", 1, 0.60), run("dstee", 0, 0.52), run("dstee", 1, 0.59),
            run("set", 1, 0.63), run("set", 0, 0.49)]
    table = paired_table(runs, ["rigl", "dstee", "set"])
    # +2.00 and -1.00 points: mean +0.50, sample std 2.12, t(0.975, 1) = 12.706,
    # half-width 12.706 * 2.12 / sqrt(2) = 19.06; ahead on 1 of 2 seeds.
    assert "| dstee | 55.50 +- 4.95 (2) | +2.00, -1.00 (+0.50 +- 2.12; 95% CI -18.56 to +19.56; 1/2) |" in table
    # Paired by seed and listed in seed order, whatever order the runs came in.
    assert "| set | 56.00 +- 9.90 (2) | -1.00, +3.00 (+1.00 +- 2.83; 95% CI -24.41 to +26.41; 1/2) |" in table
    assert "| rigl | 55.00 +- 7.07 (2) |  |" in table


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the study runs on tensorflow; its arithmetic is backend-independent")
@pytest.mark.filterwarnings("ignore:DSTEE plans 0 mask update")
def test_the_half_width_control_holds_the_same_weights():
    """The channel study's control trains the half-width model with as many
    weights as the full one at the study's sparsity."""
    study = _benchmark_module("channel_accuracy")
    builders = study.BUILDERS
    x = np.zeros((8, 32, 32, 3), "float32")
    y = np.zeros((8,), "int32")

    def active(name, sparsity):
        model = builders[name]()
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callback = keras_dstee.DSTEE(sparsity=sparsity, seed=0)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        return keras_dstee.summary(model, print_fn=lambda line: None)["total"]["active"]

    half = study.half_width_sparsity("small_cnn", 0.9)
    assert 0.6 < half < 0.7
    assert abs(active("small_cnn_half", half) - active("small_cnn", 0.9)) <= 2


@pytest.mark.skipif(not os.path.isfile(CIFAR10), reason="../shared/data/cifar10.npz missing")
def test_step_costs_compare_the_shrunk_model_with_its_final_architecture():
    result = _benchmark_module("training_cost").step_costs("small_cnn", steps=4, repeats=1)
    assert result["backend"] == keras.backend.backend() and result["rebuilds"] >= 1
    assert set(result["step_s"]) == {"final", "final_copy", "sparse_not_shrunk", "shrunk"}
    assert all(s > 0 for s in result["step_s"].values())
    assert result["against_final"]["final"] == 1.0
