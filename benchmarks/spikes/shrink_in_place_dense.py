"""Spike for issue 36 (a time-boxed feasibility check, not library code):
can a callback shrink a model in place at an epoch boundary inside one
`fit`? A Dense 16-32-32-4 model with Adam; at the end of epoch 1 hidden
layer 1 loses half its units (the model object the user holds stays the
same), Adam is rebuilt with its slots sliced, and `fit` goes on.

    KERAS_BACKEND=jax python benchmarks/spikes/shrink_in_place_dense.py
"""
import os
import tempfile
import time

import keras
import numpy as np
from keras import ops

keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(512, 16)).astype("float32")
y = np.random.default_rng(1).integers(0, 4, 512)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu", name="h1"),
                          keras.layers.Dense(32, activation="relu", name="h2"), keras.layers.Dense(4, name="out")])
model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def swap_variable(layer, attr, value):
    """Replaces `layer.<attr>` (a Variable) by a new one holding `value`."""
    old = getattr(layer, attr)
    layer._tracker.unlock()
    new = keras.Variable(value, dtype=old.dtype, trainable=old.trainable, name=old.name)
    # Keep the position in the layer's variable list (optimizer order).
    setattr(layer, attr, new)
    lst = layer._trainable_variables if old.trainable else layer._non_trainable_variables
    positions = [i for i, v in enumerate(lst) if v is new]
    i = next(i for i, v in enumerate(lst) if v is old)
    lst[i] = new
    # the tracker appended `new` at the end as well: remove the duplicate
    for j in reversed(positions):
        if j != i:
            del lst[j]
    layer._tracker.lock()
    return new


class Shrink(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch != 0:
            return
        m = self.model
        keep = np.arange(16)
        h1, h2 = m.get_layer("h1"), m.get_layer("h2")
        opt = m.optimizer
        old_vars = list(m.trainable_variables)
        old_slots = {id(v): [ops.convert_to_numpy(s) for s in (opt._momentums[opt._get_variable_index(v)], opt._velocities[opt._get_variable_index(v)])] for v in old_vars}
        iterations = int(ops.convert_to_numpy(opt.iterations))
        gone = np.arange(16, 32)
        for var, index in ((h1.kernel, (slice(None), gone)), (h1.bias, (gone,)), (h2.kernel, (gone, slice(None)))):
            value = ops.convert_to_numpy(var).copy()
            value[index] = 0
            var.assign(value)
        k1 = ops.convert_to_numpy(h1.kernel)[:, keep]
        b1 = ops.convert_to_numpy(h1.bias)[keep]
        self.k1 = k1
        k2 = ops.convert_to_numpy(h2.kernel)[keep, :]
        before = ops.convert_to_numpy(m(x[:8]))
        slices = {}
        nk1 = swap_variable(h1, "_kernel" if hasattr(h1, "_kernel") else "kernel", k1)
        slices[id(nk1)] = (id(old_vars[0]), (slice(None), keep))
        nb1 = swap_variable(h1, "bias", b1)
        slices[id(nb1)] = (id(old_vars[1]), (keep,))
        nk2 = swap_variable(h2, "_kernel" if hasattr(h2, "_kernel") else "kernel", k2)
        slices[id(nk2)] = (id(old_vars[2]), (keep, slice(None)))
        h1.units = 16
        h2.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: 16})
        h2._build_shapes_dict = {"input_shape": (None, 16)}  # what `get_build_config` saves
        after = ops.convert_to_numpy(m(x[:8]))
        print("outputs equal after the swap:", np.allclose(before, after, atol=1e-5), flush=True)
        new_opt = keras.optimizers.Adam.from_config(opt.get_config())
        new_opt.build(m.trainable_variables)
        new_opt.iterations.assign(iterations)
        for v in m.trainable_variables:
            src, idx = slices.get(id(v), (id(v), None))
            moms = old_slots[src]
            i = new_opt._get_variable_index(v)
            for store, value in zip((new_opt._momentums, new_opt._velocities), moms):
                store[i].assign(value if idx is None else value[idx])
        m.optimizer = new_opt
        m.make_train_function(force=True)
        if hasattr(m, "_jax_state_synced"):
            m._jax_state_synced = True
        self.shapes = [tuple(v.shape) for v in m.trainable_variables]


cb = Shrink()
start = time.time()
h = model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[cb])
print(keras.backend.backend(), "losses", [round(loss, 4) for loss in h.history["loss"]], "shapes", [tuple(v.shape) for v in model.trainable_variables], f"{time.time()-start:.1f}s")
print("h1 kernel", tuple(model.get_layer("h1").kernel.shape), "optimizer vars", len(model.optimizer.variables),
      "trained after the swap:", not np.allclose(ops.convert_to_numpy(model.get_layer("h1").kernel), cb.k1),
      "iterations", int(ops.convert_to_numpy(model.optimizer.iterations)))
saved = os.path.join(tempfile.mkdtemp(), "m.keras")
model.save(saved)
loaded = keras.saving.load_model(saved)
print("reloaded equal:", np.allclose(ops.convert_to_numpy(loaded(x[:8])), ops.convert_to_numpy(model(x[:8])), atol=1e-6))
