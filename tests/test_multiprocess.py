"""Several processes on one machine (loopback only, bounded in time): JAX's
`jax.distributed` (`keras.distribution.initialize`) with `DataParallel` and
`ModelParallel`, TensorFlow's `MultiWorkerMirroredStrategy`, and a torch
custom loop over `torch.distributed` (gloo) that averages gradients, across 2
processes give the same masks in every process, equal to one process on the
same global batches; `seed=None` agrees across processes whatever their
numpy states."""

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
mode, pid, port, out, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")[0], sys.argv[4], sys.argv[5]
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


# One worker of a run: argv = mode, worker index, ports, output file, seed,
# method. Keras's own bug under this strategy is patched here, in the test.
TF_WORKER = """
import os, sys, json
mode, pid, ports, out, seed, method = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4], sys.argv[5], sys.argv[6]
seed = None if seed == "none" else int(seed)
if mode == "multi_worker":
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": pid}})
import numpy as np, tensorflow as tf, keras, keras_dstee


def patch_keras_20585():
    '''keras-team/keras#20585: stock Keras 3 `fit` fails under
    MultiWorkerMirroredStrategy. Each patch only changes what would crash:
    a per-replica batch given to the symbolic build (the local replica's
    batch is used), and a MEAN over axis 0 of a scalar (over no axis).'''
    from keras.src.backend.tensorflow import trainer as tf_trainer

    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                batch = next(it)
                local = lambda v: self.distribute_strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                data_batch = tf.nest.map_structure(local, batch)
                break
            with self.distribute_strategy.scope():
                return self._symbolic_build(data_batch=data_batch)
        return build(self, iterator=iterator, data_batch=data_batch)

    reduce_per_replica = tf_trainer.reduce_per_replica

    def reduce(values, strategy, reduction):
        if tf_trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            def mean(v):
                rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=0 if rank else None)
            return tf.nest.map_structure(mean, values)
        return reduce_per_replica(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce


strategy = tf.distribute.get_strategy()
if mode == "multi_worker":
    patch_keras_20585()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16)).astype("float32"); y = rng.integers(0, 5, size=256)
keras.utils.set_random_seed(0)
np.random.seed(pid)
if mode == "multi_worker":
    halves = x.reshape(8, 2, 16, 16), y.reshape(8, 2, 16)
    def per_worker(context):
        i = context.input_pipeline_id
        return tf.data.Dataset.from_tensor_slices((halves[0][:, i].reshape(-1, 16), halves[1][:, i].reshape(-1))).batch(16)
    data = strategy.distribute_datasets_from_function(per_worker)
else:
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
with strategy.scope():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu", name="wide"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = model.fit(data, epochs=2, steps_per_epoch=8, verbose=0,
                    callbacks=[keras_dstee.SparseTraining(method, sparsity=0.8, distribution="uniform", update_freq=2, seed=seed)])
result = {"replicas": strategy.num_replicas_in_sync, "kernels": [np.flatnonzero(keras.ops.convert_to_numpy(k.mask)).tolist() for k in model.optimizer.kernels],
          "active": [k.active for k in model.optimizer.kernels], "sparsity": history.history["sparsity"]}
with open(out, "w") as f:
    json.dump(result, f)
"""


# One rank of a torch.distributed run (gloo): the README's custom loop, the
# gradients averaged over ranks before `SparseOptimizer.apply`.
TORCH_WORKER = """
import os, sys, json
mode, rank, ports, out, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4], sys.argv[5]
seed = None if seed == "none" else int(seed)
import numpy as np, torch, torch.distributed as dist, keras, keras_dstee
world = 1
if mode == "ddp":
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[0]}", rank=rank, world_size=2)
    world = 2
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16)).astype("float32"); y = rng.integers(0, 5, size=256)
keras.utils.set_random_seed(0)
np.random.seed(rank)  # different numpy states: seed=None must still agree
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
densities = keras_dstee.layer_densities(model, sparsity=0.8, distribution="uniform")
optimizer = keras_dstee.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), densities,
                                        method="set", update_freq=2, end_step=12, seed=seed)
optimizer.build(model.trainable_variables)
optimizer.install()
per_rank = 32 // world
for step in range(16):
    start = (step % 8) * 32 + rank * per_rank
    batch = slice(start, start + per_rank)
    xb, yb = torch.as_tensor(x[batch]), torch.as_tensor(y[batch])
    loss = loss_fn(yb, model(xb, training=True))
    model.zero_grad()
    loss.backward()
    grads = [v.value.grad for v in model.trainable_variables]
    if world > 1:
        for g in grads:  # the mean gradient of the global batch, on every rank
            dist.all_reduce(g)
            g /= world
    with torch.no_grad():
        optimizer.apply(grads, model.trainable_variables)
result = {"kernels": [np.flatnonzero(keras.ops.convert_to_numpy(k.mask)).tolist() for k in optimizer.kernels],
          "active": [k.active for k in optimizer.kernels],
          "weights": [keras.ops.convert_to_numpy(v).tolist() for v in model.trainable_variables]}
with open(out, "w") as f:
    json.dump(result, f)
if world > 1:
    dist.destroy_process_group()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script, mode, count, seed, folder, *extra, timeout=600):
    """Starts `count` processes of `script`; returns their JSON outputs.
    Every process is killed if the run takes longer than `timeout` seconds."""
    port = ",".join(str(free_port()) for _ in range(count))
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    env.pop("TF_CONFIG", None)
    outputs = [os.path.join(folder, f"{mode}_{seed}_{i}.json") for i in range(count)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, mode, str(i), port, outputs[i], str(seed), *extra],
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


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the tensorflow backend")
def test_tf_two_workers_match_one(tmp_path):
    (single,) = run_processes(TF_WORKER, "single", 1, 0, str(tmp_path), "dstee")
    first, second = run_processes(TF_WORKER, "multi_worker", 2, 0, str(tmp_path), "dstee")
    assert first["replicas"] == 2
    assert first["kernels"] == second["kernels"] == single["kernels"]
    assert [len(k) for k in first["kernels"]] == first["active"]
    assert first["sparsity"] == second["sparsity"] == single["sparsity"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the tensorflow backend")
def test_tf_two_workers_agree_without_a_seed(tmp_path):
    # SET grows at random: without a seed every worker still draws alike.
    first, second = run_processes(TF_WORKER, "multi_worker", 2, "none", str(tmp_path), "set")
    assert first["kernels"] == second["kernels"]


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed runs on the torch backend")
def test_torch_two_ranks_match_one(tmp_path):
    import numpy as np

    (single,) = run_processes(TORCH_WORKER, "single", 1, 0, str(tmp_path))
    first, second = run_processes(TORCH_WORKER, "ddp", 2, 0, str(tmp_path))
    assert first["kernels"] == second["kernels"] == single["kernels"]
    assert [len(k) for k in first["kernels"]] == first["active"]
    for a, b, c in zip(first["weights"], second["weights"], single["weights"]):
        np.testing.assert_array_equal(a, b)  # the same update on every rank
        np.testing.assert_allclose(a, c, atol=1e-5)  # the all-reduce sums in another order
    first, second = run_processes(TORCH_WORKER, "ddp", 2, "none", str(tmp_path))
    assert first["kernels"] == second["kernels"]
