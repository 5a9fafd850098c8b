"""Several processes on one machine (loopback only, bounded in time): with
JAX's `jax.distributed` (`keras.distribution.initialize`), `DataParallel`
and `ModelParallel` across 2 processes give the same masks in every process,
equal to one process on the same global batches; `seed=None` agrees across
processes whatever their numpy states."""

import json
import os
import socket
import subprocess
import sys

import keras
import pytest

BACKEND = keras.backend.backend()

# One process of a run: argv = mode, process id, port, output file, seed.
JAX_WORKER = """
import os, sys, json
mode, pid, port, out, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
seed = None if seed == "none" else int(seed)
import numpy as np, keras, keras_dstee, jax
if mode != "single":
    keras.distribution.initialize(f"127.0.0.1:{port}", 2, pid)
devices = jax.devices()
if mode == "data_parallel":
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
elif mode == "model_parallel":
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*wide.*kernel"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch", auto_shard_dataset=False))
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16)).astype("float32"); y = rng.integers(0, 5, size=256)
batch = 32
if mode == "data_parallel":
    x = x.reshape(8, 2, 16, 16)[:, pid].reshape(-1, 16); y = y.reshape(8, 2, 16)[:, pid].reshape(-1); batch = 16
keras.utils.set_random_seed(0)
np.random.seed(pid)  # different numpy states: seed=None must still agree
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu", name="wide"),
                          keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0,
          callbacks=[keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=seed)])
report = keras_dstee.summary(model, print_fn=lambda line: None)
from jax.experimental import multihost_utils
result = {"processes": jax.process_count(), "devices": len(devices), "sparsity": history.history["sparsity"],
          "coverage": history.history["coverage"], "summary_active": report["total"]["active"], "kernels": []}
for k in model.optimizer.kernels:
    mask = np.asarray(multihost_utils.process_allgather(k.mask.value, tiled=True))
    weight = np.asarray(multihost_utils.process_allgather(k.variable.value, tiled=True))
    result["kernels"].append({"active": k.active, "mask": np.flatnonzero(mask).tolist(),
                              "zeros_outside": bool((weight[mask == 0] == 0).all())})
with open(out, "w") as f:
    json.dump(result, f)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script, mode, count, seed, folder, timeout=600):
    """Starts `count` processes of `script`; returns their JSON outputs.
    Every process is killed if the run takes longer than `timeout` seconds."""
    port = str(free_port())
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    outputs = [os.path.join(folder, f"{mode}_{seed}_{i}.json") for i in range(count)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, mode, str(i), port, outputs[i], str(seed)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(count)
    ]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]
    results = []
    for path in outputs:
        with open(path) as f:
            results.append(json.load(f))
    return results


def masks(result):
    return [k["mask"] for k in result["kernels"]]


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed runs on the jax backend")
@pytest.mark.parametrize("mode", ["data_parallel", "model_parallel"])
def test_jax_two_processes_match_one(mode, tmp_path):
    (single,) = run_processes(JAX_WORKER, "single", 1, 0, str(tmp_path))
    first, second = run_processes(JAX_WORKER, mode, 2, 0, str(tmp_path))
    assert first["processes"] == 2 and first["devices"] == 2
    assert masks(first) == masks(second) == masks(single)
    for result in (first, second):
        assert all(k["zeros_outside"] and len(k["mask"]) == k["active"] for k in result["kernels"])
        # The logged metrics and the summary read the whole (sharded) kernels.
        assert result["sparsity"] == single["sparsity"] and result["coverage"] == single["coverage"]
        assert result["summary_active"] == single["summary_active"]


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed runs on the jax backend")
def test_jax_two_processes_agree_without_a_seed(tmp_path):
    # Each process seeds numpy differently before the callback draws a seed.
    first, second = run_processes(JAX_WORKER, "data_parallel", 2, "none", str(tmp_path))
    assert masks(first) == masks(second)
