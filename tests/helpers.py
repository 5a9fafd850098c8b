"""Small models and checks shared by the tests."""

import keras
import numpy as np
import pytest

import keras_dstee


def only_on(backend, why):
    """Runs a slow test on one backend: what it checks does not depend on
    the backend (`why`), and the core it relies on is tested on all three."""
    return pytest.mark.skipif(keras.backend.backend() != backend, reason=f"{why}: runs on {backend}")


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(5),
        ]
    )


def compile_model(model, optimizer=None, jit_compile="auto"):
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def to_numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def sparse_optimizer(model):
    return keras_dstee.optimizer.find_sparse_optimizer(model.optimizer)


def masks(model):
    return [to_numpy(k.mask) for k in sparse_optimizer(model).kernels]


class EveryStep(keras.callbacks.Callback):
    """Runs `check(model, batch)` after every training step."""

    def __init__(self, check):
        super().__init__()
        self.check = check

    def on_train_batch_end(self, batch, logs=None):
        # `self.model` syncs the JAX state into the variables.
        self.check(self.model, batch)


def assert_budget(model):
    """Exact budget: `active` ones in each mask, zeros outside it."""
    for k in sparse_optimizer(model).kernels:
        mask = to_numpy(k.mask)
        weight = to_numpy(k.variable)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert int(mask.sum()) == k.active, k.variable.path
        assert np.count_nonzero(weight[mask == 0]) == 0, k.variable.path
        assert np.count_nonzero(weight) <= k.active
