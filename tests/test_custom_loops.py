"""The README's custom training loops, one per backend, train with exact
budgets and update the masks at the update steps."""

import keras
import numpy as np
import pytest
from helpers import assert_budget
from helpers import small_cnn
from helpers import to_numpy

import keras_dstee

BACKEND = keras.backend.backend()
STEPS = 8


def _setup():
    model = small_cnn()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.Adam(1e-3),
        keras_dstee.layer_densities(model, sparsity=0.9),
        update_freq=2,
        end_step=6,
        seed=0,
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()  # mask the kernels before the first forward pass
    return model, loss_fn, optimizer


def _batches(data):
    x, y = data
    assert len(x) >= 32 * STEPS
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 32 * STEPS, 32)]


def _masks(optimizer):
    return [to_numpy(k.mask).copy() for k in optimizer.kernels]


def _check(model, optimizer, first_masks):
    assert int(to_numpy(optimizer.step)) == STEPS
    changed = [not np.array_equal(a, to_numpy(k.mask)) for a, k in zip(first_masks, optimizer.kernels)]
    assert any(changed)
    # The model reads its optimizer through `model.optimizer` in the budget check.
    model.optimizer = optimizer
    assert_budget(model)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the TensorFlow loop")
def test_tensorflow_loop(data):
    import tensorflow as tf

    model, loss_fn, optimizer = _setup()
    first = _masks(optimizer)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    for x, y in _batches(data):
        train_step(x, y)
    _check(model, optimizer, first)


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch loop")
def test_torch_loop(data):
    import torch

    model, loss_fn, optimizer = _setup()
    first = _masks(optimizer)
    for x, y in _batches(data):
        loss = loss_fn(torch.as_tensor(y), model(torch.as_tensor(x), training=True))
        model.zero_grad()
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
        with torch.no_grad():
            optimizer.apply(grads, model.trainable_variables)
    _check(model, optimizer, first)


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX loop")
def test_jax_jitted_loop(data):
    import jax

    model, loss_fn, optimizer = _setup()
    first = _masks(optimizer)

    def compute_loss(trainable, non_trainable, x, y):
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, y_pred), non_trainable

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    @jax.jit
    def train_step(state, x, y):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_variables)

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    for x, y in _batches(data):
        loss, state = train_step(state, x, y)
    trainable, non_trainable, optimizer_variables = state
    for variable, value in zip(model.trainable_variables, trainable):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_variables):
        variable.assign(value)
    _check(model, optimizer, first)


@pytest.mark.skipif(BACKEND != "jax", reason="eager JAX")
def test_jax_eager_loop(data):
    import jax

    model, loss_fn, optimizer = _setup()
    first = _masks(optimizer)

    def compute_loss(trainable, x, y):
        y_pred, _ = model.stateless_call(trainable, [v.value for v in model.non_trainable_variables], x)
        return loss_fn(y, y_pred)

    for x, y in _batches(data):
        grads = jax.grad(compute_loss)([v.value for v in model.trainable_variables], x, y)
        optimizer.apply(grads, model.trainable_variables)
    _check(model, optimizer, first)
