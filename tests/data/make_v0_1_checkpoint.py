"""Writes the checkpoint of release 0.1 that `test_compatibility.py` loads,
and what the 0.1 code trains from it on each backend.

Run with keras_dstee 0.1 (commit 01f25e1) first on the import path:

    git worktree add /tmp/v0_1 01f25e1
    KERAS_BACKEND=tensorflow PYTHONPATH=/tmp/v0_1 python tests/data/make_v0_1_checkpoint.py write
    for b in tensorflow jax torch; do
      KERAS_BACKEND=$b PYTHONPATH=/tmp/v0_1 python tests/data/make_v0_1_checkpoint.py resume
    done

`write` trains a small CNN with DST-EE for 2 of 4 epochs and saves
`v0_1_dstee.keras` (method as a string, `exploration`/`epsilon` on the
optimizer config, densities by position); `resume` loads it, trains epochs
3-4 and stores masks, counters and weights in `v0_1_resumed_<backend>.npz`.
"""

import os
import sys

import keras
import numpy as np

import keras_dstee

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKPOINT = os.path.join(HERE, "v0_1_dstee.keras")


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 5, size=64)


def callback():
    return keras_dstee.DSTEE(sparsity=0.8, update_freq=1, end=1.0, seed=3)


def fit(model, **kwargs):
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[callback()], **kwargs)


def state(model):
    optimizer = model.optimizer
    arrays = {"step": keras.ops.convert_to_numpy(optimizer.step)}
    for i, k in enumerate(optimizer.kernels):
        # 0.1 kept a kernel's state in a dict, later releases in a record.
        field = (lambda name, k=k: k[name]) if isinstance(k, dict) else (lambda name, k=k: getattr(k, name))
        arrays[f"mask_{i}"] = keras.ops.convert_to_numpy(field("mask"))
        arrays[f"counter_{i}"] = keras.ops.convert_to_numpy(field("counter"))
    for i, w in enumerate(model.weights):
        arrays[f"weight_{i}"] = keras.ops.convert_to_numpy(w)
    return arrays


class StopAfter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.model.save(CHECKPOINT)
            self.model.stop_training = True


def write():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(5),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[callback(), StopAfter()])


def resume():
    model = keras.saving.load_model(CHECKPOINT)
    fit(model, initial_epoch=2)
    np.savez(os.path.join(HERE, f"v0_1_resumed_{keras.backend.backend()}.npz"), **state(model))


if __name__ == "__main__":
    {"write": write, "resume": resume}[sys.argv[1]]()
