"""Multi-device training: JAX `keras.distribution` and TF `MirroredStrategy`
give the masks of one device; other multi-replica setups are refused clearly."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_dstee

BACKEND = keras.backend.backend()

# Runs in a fresh process: XLA's device count is fixed when jax starts.
JAX_SCRIPT = """
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np, keras, keras_dstee, jax
mode = sys.argv[1]
if mode == "data_parallel":
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
elif mode == "model_parallel":
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], jax.devices())
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*wide.*kernel"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch"))
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16)).astype("float32"); y = rng.integers(0, 5, size=256)
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu", name="wide"),
                          keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
          callbacks=[keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0)])
out = {"devices": len(jax.devices()), "kernels": []}
for k in model.optimizer.kernels:
    mask = k.mask.value
    shards = [np.asarray(s.data) for s in mask.addressable_shards]
    weight = np.asarray(k.variable.value)
    out["kernels"].append({
        "path": k.variable.path,
        "active": k.active,
        "mask_sum": int(np.asarray(mask).sum()),
        "zeros_outside": bool((weight[np.asarray(mask) == 0] == 0).all()),
        "mask": np.flatnonzero(np.asarray(mask)).tolist(),
        "replicas_equal": all(s.shape == shards[0].shape and (s == shards[0]).all() for s in shards),
        "kernel_spec": str(getattr(k.variable.value.sharding, "spec", None)),
        "mask_spec": str(getattr(mask.sharding, "spec", None)),
        "counter_spec": str(getattr(k.counter.value.sharding, "spec", None)),
    })
print("RESULT " + json.dumps(out))
"""


def _run_jax(mode):
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, mode], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the jax backend")
def test_jax_data_parallel_matches_single_device():
    single = _run_jax("single")
    parallel = _run_jax("data_parallel")
    assert parallel["devices"] == 2
    for one, two in zip(single["kernels"], parallel["kernels"]):
        assert two["replicas_equal"] and two["zeros_outside"]
        assert two["mask_sum"] == two["active"]
        assert one["mask"] == two["mask"]  # same global batches, same masks


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the jax backend")
def test_jax_model_parallel_shards_masks_like_kernels():
    result = _run_jax("model_parallel")
    wide = next(k for k in result["kernels"] if "wide" in k["path"])
    assert "model" in wide["kernel_spec"]
    assert wide["mask_spec"] == wide["counter_spec"] == wide["kernel_spec"]
    for kernel in result["kernels"]:
        assert kernel["mask_sum"] == kernel["active"] and kernel["zeros_outside"]


# Runs in a fresh process: logical devices are fixed before TF starts.
TF_SCRIPT = """
import contextlib, json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_dstee
mode, policy = sys.argv[1], sys.argv[2]
keras.mixed_precision.set_global_policy(policy)
strategy = {
    "single": None,
    "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    "single_direct": None,
    "mirrored_direct": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    "central_storage": lambda: tf.distribute.experimental.CentralStorageStrategy(["/cpu:0", "/cpu:1"]),
}[mode]
strategy = strategy() if strategy else None
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16)).astype("float32"); y = rng.integers(0, 5, size=256)
keras.utils.set_random_seed(0)
with strategy.scope() if strategy else contextlib.nullcontext():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    if mode.endswith("direct"):  # no callback: `SparseOptimizer` compiled in the scope
        optimizer = keras_dstee.SparseOptimizer(optimizer, keras_dstee.layer_densities(model, 0.8, "uniform"),
                                                update_freq=2, end_step=12, seed=0)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if mode.endswith("direct"):
        optimizer.build(model.trainable_variables)  # so the initial masks can be read

def copies(variable):  # one array per replica
    value = variable.value
    return [np.asarray(c) for c in getattr(value, "values", [value])]

class InitialMasks(keras.callbacks.Callback):  # runs after DSTEE has installed
    def on_train_begin(self, logs=None):
        sparse = keras_dstee.optimizer.find_sparse_optimizer(self.model.optimizer)
        self.masks = [copies(k.mask)[0] for k in sparse.kernels]

initial = InitialMasks()
callback = keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0)
before = [w.numpy().copy() for w in model.weights]
try:
    callbacks = [initial] if mode.endswith("direct") else [callback, initial]
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
except ValueError as error:
    same = all((a == w.numpy()).all() for a, w in zip(before, model.weights))
    print("RESULT " + json.dumps({"refused": str(error), "weights_untouched": bool(same)}))
    sys.exit()
out = {"replicas": model.distribute_strategy.num_replicas_in_sync, "kernels": []}
for k, start in zip(keras_dstee.optimizer.find_sparse_optimizer(model.optimizer).kernels, initial.masks):
    masks, weights = copies(k.mask), copies(k.variable)
    out["kernels"].append({
        "active": k.active,
        "mask_sums": [int(m.sum()) for m in masks],
        "zeros_outside": all(bool((w[m == 0] == 0).all()) for w, m in zip(weights, masks)),
        "replicas_equal": all((m == masks[0]).all() for m in masks)
        and all((w == weights[0]).all() for w in weights),
        "moved": int((masks[0] != start).sum()),
        "mask": np.flatnonzero(masks[0]).tolist(),
        "weight": weights[0].astype("float32").ravel().tolist(),
    })
print("RESULT " + json.dumps(out))
"""


def _run_tf(mode, policy="float32"):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", TF_SCRIPT, mode, policy], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the tensorflow backend")
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_tf_mirrored_strategy_matches_single_device(policy):
    single = _run_tf("single", policy)
    mirrored = _run_tf("mirrored", policy)
    assert mirrored["replicas"] == 2
    for one, two in zip(single["kernels"], mirrored["kernels"]):
        assert two["replicas_equal"] and two["zeros_outside"]
        assert two["mask_sums"] == [two["active"]] * 2
        assert two["moved"] > 0  # the masks were updated during training
        # Scored on the gradient summed over replicas: the masks of one
        # device on the same global batches.
        assert one["mask"] == two["mask"]
        np.testing.assert_allclose(one["weight"], two["weight"], atol=1e-2 if policy == "mixed_float16" else 1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the tensorflow backend")
def test_tf_mirrored_strategy_with_sparse_optimizer_compiled_directly():
    single = _run_tf("single_direct")
    mirrored = _run_tf("mirrored_direct")
    for one, two in zip(single["kernels"], mirrored["kernels"]):
        assert two["replicas_equal"] and two["zeros_outside"] and two["moved"] > 0
        assert two["mask_sums"] == [two["active"]] * 2
        assert one["mask"] == two["mask"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the tensorflow backend")
def test_tf_unsupported_strategy_is_refused_clearly():
    result = _run_tf("central_storage")
    assert result["weights_untouched"]
    assert "CentralStorageStrategy over 2 replicas is not supported" in result["refused"]


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed is the torch backend's")
def test_torch_distributed_is_refused_clearly(monkeypatch, data):
    import torch.distributed
    from helpers import compile_model
    from helpers import small_cnn

    model = compile_model(small_cnn())
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    callback = keras_dstee.DSTEE()
    callback.set_model(model)  # `fit` itself would trip on the fake process group
    with pytest.raises(ValueError, match="torch.distributed over 2 replicas is not supported"):
        callback.on_train_begin()
    for a, w in zip(before, model.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(w))
