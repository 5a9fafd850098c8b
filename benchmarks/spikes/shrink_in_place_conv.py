"""Spike for issue 36 (a time-boxed feasibility check, not library code):
a Functional conv -> BatchNormalization -> conv model with SGD momentum;
in place, at the end of epoch 1, conv1 loses 4 of its 8 filters (whose
weights, bias and BN scale and shift were zeroed first, as channel removal
leaves them), the momentum is sliced, and `fit` goes on.

    KERAS_BACKEND=jax python benchmarks/spikes/shrink_in_place_conv.py
"""
import os
import tempfile
import time

import keras
import numpy as np
from keras import ops

keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(256, 8, 8, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 4, 256)
inp = keras.Input((8, 8, 3))
h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
h = keras.layers.BatchNormalization(name="bn1")(h)
h = keras.layers.ReLU()(h)
h = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
model = keras.Model(inp, keras.layers.Dense(4, name="out")(h))
model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def swap(layer, attr, value):
    old = getattr(layer, attr)
    layer._tracker.unlock()
    new = keras.Variable(value, dtype=old.dtype, trainable=old.trainable, name=old.name)
    setattr(layer, attr, new)
    lst = layer._trainable_variables if old.trainable else layer._non_trainable_variables
    dup = [i for i, v in enumerate(lst) if v is new]
    i = next(i for i, v in enumerate(lst) if v is old)
    lst[i] = new
    for j in reversed(dup):
        if j != i:
            del lst[j]
    layer._tracker.lock()
    return new


class Shrink(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch != 0:
            return
        m = self.model
        c1, bn, c2 = m.get_layer("conv1"), m.get_layer("bn1"), m.get_layer("conv2")
        gone, keep = np.arange(4, 8), np.arange(4)
        for var, index in ((c1.kernel, (..., gone)), (c1.bias, (gone,)), (bn.gamma, (gone,)), (bn.beta, (gone,))):
            v = ops.convert_to_numpy(var).copy()
            v[index] = 0
            var.assign(v)
        before = ops.convert_to_numpy(m(x[:8], training=False))
        opt = m.optimizer
        old = list(m.trainable_variables)
        moms = {id(v): ops.convert_to_numpy(opt.momentums[opt._get_variable_index(v)]) for v in old}
        it = int(ops.convert_to_numpy(opt.iterations))
        src = {}
        def put(layer, attr, index):
            if attr == "kernel" and hasattr(layer, "_kernel"):
                attr = "_kernel"  # `kernel` is a read-only property (LoRA, quantization)
            o = getattr(layer, attr)
            n = swap(layer, attr, ops.convert_to_numpy(o)[index])
            src[id(n)] = (id(o), index)
        put(c1, "kernel", (..., keep))
        put(c1, "bias", (keep,))
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            put(bn, attr, (keep,))
        put(c2, "kernel", (slice(None), slice(None), keep, slice(None)))
        c1.filters = 4
        for layer, shape in ((bn, (None, 8, 8, 4)), (c2, (None, 8, 8, 4))):
            layer.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: 4})
            layer._build_shapes_dict = {"input_shape": shape}
        after = ops.convert_to_numpy(m(x[:8], training=False))
        print("outputs equal after the swap:", np.allclose(before, after, atol=1e-5), flush=True)
        new = keras.optimizers.SGD.from_config(opt.get_config())
        new.build(m.trainable_variables)
        new.iterations.assign(it)
        for v in m.trainable_variables:
            s, index = src.get(id(v), (id(v), None))
            val = moms[s] if index is None else moms[s][index]
            new.momentums[new._get_variable_index(v)].assign(val)
        m.optimizer = new
        m.make_train_function(force=True)
        if hasattr(m, "_jax_state_synced"):
            m._jax_state_synced = True


start = time.time()
hist = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[Shrink()])
bn = model.get_layer("bn1")
print(keras.backend.backend(), "losses", [round(loss, 4) for loss in hist.history["loss"]],
      "conv1", tuple(model.get_layer("conv1").kernel.shape), "bn stats", tuple(bn.moving_mean.shape),
      "moving mean changed after the swap:", bool(np.any(ops.convert_to_numpy(bn.moving_mean) != 0)), f"{time.time()-start:.1f}s")
saved = os.path.join(tempfile.mkdtemp(), "c.keras")
model.save(saved)
loaded = keras.saving.load_model(saved)
print("reloaded equal:", np.allclose(ops.convert_to_numpy(loaded(x[:8])), ops.convert_to_numpy(model(x[:8])), atol=1e-5),
      "predict ok:", model.predict(x[:4], verbose=0).shape)
