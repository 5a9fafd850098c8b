"""Sparsifying a model that already has trained weights: masks started from
the largest weights (`initial_mask="magnitude"`) and GMP from dense.

The "pretrained" model is trained here, dense, on a task it learns well (a
random linear teacher), so no weights are downloaded."""

import keras
import numpy as np
import pytest
from helpers import assert_budget
from helpers import only_on
from helpers import to_numpy

import keras_dstee

SPARSITY = 0.8


def _mlp():
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(4)]
    )


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(16, 4))
    x = rng.normal(size=(1024, 16)).astype("float32")
    y = np.argmax(x @ teacher, axis=1)
    keras.utils.set_random_seed(0)
    model = _compile(_mlp(), keras.optimizers.Adam(1e-2))
    model.fit(x[:768], y[:768], batch_size=64, epochs=40, verbose=0)
    weights = [to_numpy(w).copy() for w in model.weights]
    return (x[:768], y[:768]), (x[768:], y[768:]), weights


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _pretrained(weights):
    model = _mlp()
    model.set_weights(weights)
    return model


def _accuracy(model, data):
    return model.evaluate(*data, verbose=0, batch_size=256)[1]


def _largest_mask(weight, count, block=None):
    """Numpy reference: the `count` positions (blocks) of largest |w| (block L1)."""
    scores = np.abs(weight)
    if block is not None:
        rows, cols = block
        scores = scores.reshape(scores.shape[0] // rows, rows, scores.shape[1] // cols, cols).sum(axis=(1, 3))
    flat = np.zeros(scores.size, "float32")
    flat[np.argsort(-scores, axis=None, kind="stable")[:count]] = 1.0
    mask = flat.reshape(scores.shape)
    if block is not None:
        mask = np.repeat(np.repeat(mask, block[0], axis=0), block[1], axis=1)
    return mask


@pytest.mark.parametrize("block_size", [None, (4, 1)], ids=["unstructured", "blocks4x1"])
def test_magnitude_start_keeps_the_largest_weights_unchanged(task, block_size):
    weights = task[2]
    model = _pretrained(weights)
    before = {w.path: to_numpy(w).copy() for w in model.trainable_variables}
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(0.01), keras_dstee.layer_densities(model, SPARSITY),
        initial_mask="magnitude", block_size=block_size, end_step=10,
    )
    assert optimizer.rescale is False  # pretrained weights are not rescaled by default
    optimizer.build(model.trainable_variables)
    optimizer.install()
    for kernel in optimizer.kernels:
        mask = to_numpy(kernel.mask)
        unit = 1 if kernel.block is None else int(np.prod(kernel.block))
        expected = _largest_mask(before[kernel.variable.path], kernel.initial_active // unit, kernel.block)
        np.testing.assert_array_equal(mask, expected)
        assert int(mask.sum()) == kernel.active
        # Kept weights are exactly the pretrained ones, the others exactly 0.
        np.testing.assert_array_equal(to_numpy(kernel.variable), before[kernel.variable.path] * expected)


# GraNet starts half dense and prunes by magnitude on its way down, so a
# random start did as well there; a pretrained model is GMP's case.
@pytest.mark.parametrize("method", ["dstee", "rigl", "set", "static"])
def test_magnitude_start_trains_on_from_the_pretrained_accuracy(task, method):
    train, test, weights = task
    assert _accuracy(_compile(_pretrained(weights), "sgd"), test) > 0.9
    results = {}
    for initial_mask in ("random", "magnitude"):
        model = _compile(_pretrained(weights), keras.optimizers.SGD(0.01, momentum=0.9))
        callback = keras_dstee.SparseTraining(
            method, sparsity=SPARSITY, seed=0, update_freq=4, end_step=5, drop_fraction=0.1, initial_mask=initial_mask,
        )
        # One epoch of 6 steps: one mask update (step 4) for the methods that update.
        model.fit(*train, batch_size=128, epochs=1, verbose=0, callbacks=[callback])
        assert_budget(model)
        results[initial_mask] = _accuracy(model, test)
    # The pretrained weights survive the first update only when the mask
    # starts from them (measured: 0.80-0.82 against 0.66-0.72 on every
    # backend and method).
    assert results["magnitude"] > results["random"] + 0.05, results
    assert results["magnitude"] > 0.75, results


def test_gmp_prunes_a_pretrained_model_while_fine_tuning(task):
    train, test, weights = task
    dense_accuracy = _accuracy(_compile(_pretrained(weights), "sgd"), test)
    model = _compile(_pretrained(weights), keras.optimizers.SGD(0.01, momentum=0.9))
    history = model.fit(*train, batch_size=64, epochs=3, verbose=0,
                        callbacks=[keras_dstee.GMP(sparsity=SPARSITY, update_freq=2, end=0.8, seed=0)])
    assert history.history["sparsity"][0] < history.history["sparsity"][-1]
    assert history.history["sparsity"][-1] == pytest.approx(SPARSITY, abs=0.005)
    assert _accuracy(model, test) > dense_accuracy - 0.15


def test_initial_mask_is_checked_and_saved(task, tmp_path):
    with pytest.raises(ValueError, match="initial_mask"):
        keras_dstee.DSTEE(initial_mask="largest")
    assert keras_dstee.DSTEE().rescale is True
    assert keras_dstee.DSTEE(initial_mask="magnitude").rescale is False
    assert keras_dstee.DSTEE(initial_mask="magnitude", rescale=True).rescale is True
    train, _, weights = task
    model = _compile(_pretrained(weights), keras.optimizers.SGD(0.01))
    model.fit(*train, batch_size=128, epochs=1, verbose=0,
              callbacks=[keras_dstee.RigL(sparsity=SPARSITY, initial_mask="magnitude", update_freq=2, seed=0)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.initial_mask == "magnitude"
    for a, b in zip(model.optimizer.kernels, loaded.optimizer.kernels):
        np.testing.assert_array_equal(to_numpy(a.mask), to_numpy(b.mask))


@only_on("tensorflow", "a real pretrained backbone (magnitude starts: every backend, above)")
def test_a_keras_applications_backbone_from_a_local_weights_file(tmp_path):
    """The README's path: a `keras.applications` backbone, its weights from
    a local file, a new head, DST-EE from the largest weights."""

    def backbone():
        return keras.applications.MobileNetV2(
            weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3), alpha=0.35
        )

    keras.utils.set_random_seed(0)
    path = str(tmp_path / "backbone.weights.h5")
    backbone().save_weights(path)  # stands in for downloaded weights
    base = backbone()
    base.load_weights(path)
    model = keras.Sequential([base, keras.layers.Dense(3)])
    pretrained = {w.path: to_numpy(w).copy() for w in model.trainable_variables}
    _compile(model, keras.optimizers.SGD(0.0))  # lr 0: the masks alone act
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 32)
    callback = keras_dstee.DSTEE(sparsity=0.9, initial_mask="magnitude", update_freq=100, seed=0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert_budget(model)
    for kernel in callback.optimizer.kernels:
        mask = to_numpy(kernel.mask)
        kept = np.abs(pretrained[kernel.variable.path])[mask > 0]
        dropped = np.abs(pretrained[kernel.variable.path])[mask == 0]
        assert kept.min() >= dropped.max(), kernel.variable.path  # the largest weights, by magnitude
        np.testing.assert_array_equal(to_numpy(kernel.variable)[mask > 0], pretrained[kernel.variable.path][mask > 0])
