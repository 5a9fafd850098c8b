"""Writes what release 0.2.0 trained, for `test_compatibility.py` to hold
every later release to: the same masks, bit for bit, for the same seed.

Run with keras_dstee 0.2.0 (commit e6029fb) first on the import path:

    git worktree add /tmp/v0_2 e6029fb
    KERAS_BACKEND=tensorflow PYTHONPATH=/tmp/v0_2 python tests/data/make_v0_2_reference.py write
    for b in tensorflow jax torch; do
      KERAS_BACKEND=$b PYTHONPATH=/tmp/v0_2 python tests/data/make_v0_2_reference.py train
    done

`write` trains a small residual CNN with DST-EE and channel sparsity for 2
of 4 epochs and saves `v0_2_channels.keras`; `train` runs each of `RUNS`
from scratch on this backend and resumes that file, and stores the masks,
counters, channel flags and weights in `v0_2_reference_<backend>.npz`.
"""

import os
import sys

import keras
import numpy as np

import keras_dstee

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKPOINT = os.path.join(HERE, "v0_2_channels.keras")
L = keras.layers

# Each run: a callback, as 0.2.0 took it. They cover the methods, the
# schedules, channel removal and blocks.
RUNS = {
    "dstee_channels": lambda: keras_dstee.DSTEE(sparsity=0.8, channel_sparsity=0.5, update_freq=2, seed=3),
    "rigl": lambda: keras_dstee.RigL(sparsity=0.9, update_freq=2, seed=1),
    "set_blocks": lambda: keras_dstee.SET(sparsity=0.75, update_freq=3, seed=2, block_size=(4, 1)),
    "gmp": lambda: keras_dstee.GMP(sparsity=0.9, update_freq=2),
    "granet_channels": lambda: keras_dstee.GraNet(sparsity=0.8, channel_sparsity=0.3, update_freq=2, seed=4),
}


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8, 8, 3)).astype("float32"), rng.integers(0, 5, size=64)


def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(16, 3, padding="same", name="conv1")(inputs)))
    y = L.ReLU()(L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name="conv2")(x)))
    y = L.BatchNormalization(name="bn3")(L.Conv2D(16, 1, name="conv3")(y))
    x = L.ReLU()(L.Add()([x, y]))
    x = L.Dense(16, activation="relu", name="dense1")(L.Flatten()(L.MaxPooling2D()(x)))
    result = keras.Model(inputs, L.Dense(5, name="dense2")(x))
    result.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return result


def fit(model, callback, **kwargs):
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[callback], **kwargs)


def state(model, prefix):
    optimizer = model.optimizer
    arrays = {f"{prefix}/step": keras.ops.convert_to_numpy(optimizer.step)}
    for i, k in enumerate(optimizer.kernels):
        arrays[f"{prefix}/mask_{i}"] = keras.ops.convert_to_numpy(k.mask)
        arrays[f"{prefix}/counter_{i}"] = keras.ops.convert_to_numpy(k.counter)
    if optimizer.channels is not None:
        arrays[f"{prefix}/alive"] = keras.ops.convert_to_numpy(optimizer.channels.alive)
    for i, w in enumerate(model.weights):
        arrays[f"{prefix}/weight_{i}"] = keras.ops.convert_to_numpy(w)
    return arrays


class StopAfter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.model.save(CHECKPOINT)
            self.model.stop_training = True


def write():
    x, y = data()
    trained = model()
    trained.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                callbacks=[RUNS["dstee_channels"](), StopAfter()])


def train():
    arrays = {}
    for name, callback in RUNS.items():
        trained = model()
        fit(trained, callback())
        arrays.update(state(trained, name))
    resumed = keras.saving.load_model(CHECKPOINT)
    fit(resumed, RUNS["dstee_channels"](), initial_epoch=2)
    arrays.update(state(resumed, "resumed"))
    np.savez(os.path.join(HERE, f"v0_2_reference_{keras.backend.backend()}.npz"), **arrays)


if __name__ == "__main__":
    {"write": write, "train": train}[sys.argv[1]]()
