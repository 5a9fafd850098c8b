"""What a new user meets in the first hour: one-value arguments, data of
unknown length, a second `fit` with other settings, loggers in any order and
the sparsity the logs report."""

import csv
import glob
import math
import warnings

import keras
import numpy as np
import pytest
from helpers import assert_budget
from helpers import compile_model
from helpers import masks
from helpers import small_cnn
from helpers import sparse_optimizer
from helpers import to_numpy

import keras_dstee


def _weights(model):
    return [to_numpy(w).copy() for w in model.weights]


def _sparse_paths(model):
    return sorted(k.variable.path for k in sparse_optimizer(model).kernels)


@pytest.mark.parametrize(
    "one, many",
    [("dense.*", ["dense.*"]), (keras.layers.Dense, [keras.layers.Dense])],
    ids=["regex", "class"],
)
def test_exclude_takes_one_value_like_a_list(data, one, many):
    runs = []
    for exclude in (one, many):
        model = compile_model(small_cnn())
        model.fit(*data, batch_size=32, epochs=1, verbose=0,
                  callbacks=[keras_dstee.DSTEE(exclude=exclude, update_freq=2, seed=0)])
        runs.append((model, _sparse_paths(model), masks(model)))
    (a, paths_a, masks_a), (b, paths_b, masks_b) = runs
    assert len(paths_a) == len(paths_b) == 2
    assert all("conv2d" in p for p in paths_a + paths_b)  # both Dense kernels stay dense
    for x, y in zip(masks_a, masks_b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"exclude": 42}, "exclude"),
        ({"exclude": [keras.layers.Dense, 3]}, "exclude"),
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"rescale": "yes"}, "rescale"),
        ({"include_embeddings": None}, "include_embeddings"),
        ({"dense_first": 2}, "dense_first"),
        ({"dense_last": "no"}, "dense_last"),
        ({"end_step": 0}, "end_step"),
        ({"end_step": 2.5}, "end_step"),
        ({"distribution": 5}, "distribution"),
        ({"distribution": {"conv.*": 1.0}}, "distribution"),
        ({"distribution": {3: 0.5}}, "distribution"),
        ({"epsilon": -1}, "epsilon"),
        ({"normalize_gradients": "x"}, "normalize_gradients"),
        ({"erk_power_scale": -1}, "erk_power_scale"),
        ({"reset_regrown": "no"}, "reset_regrown"),
        ({"begin": 0.8}, "begin"),
    ],
)
def test_callback_arguments_are_checked_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}"):
        keras_dstee.DSTEE(**kwargs)


def test_method_arguments_belong_to_their_method():
    with pytest.raises(ValueError, match="RigL does not take `exploration`. Its arguments: sparsity"):
        keras_dstee.RigL(exploration=1.0)
    with pytest.raises(ValueError, match="SET does not take `epsilon`, `exploration`. Its arguments: sparsity"):
        keras_dstee.SET(exploration=1.0, epsilon=0.5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"update_freq": 0}, "update_freq"),
        ({"drop_fraction": 1.5}, "drop_fraction"),
        ({"end_step": 0}, "end_step"),
        ({"exploration": -1}, "exploration"),
        ({"epsilon": "a"}, "epsilon"),
        ({"seed": "abc"}, "seed"),
        ({"rescale": "yes"}, "rescale"),
        ({"initial_mask": "largest"}, "initial_mask"),
        ({"normalize_gradients": 3}, "normalize_gradients"),
        ({"densities": "abc"}, "densities"),
        ({"densities": {"a/kernel": True}}, "densities"),
        ({"initial_densities": {}}, "initial_densities"),
        ({"method": "gmp", "initial_densities": {"a/kernel": 2.0}}, "initial_densities"),
    ],
)
def test_sparse_optimizer_arguments_are_checked_at_construction(kwargs, name):
    kwargs = {"densities": {}, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}"):
        keras_dstee.SparseOptimizer(keras.optimizers.SGD(), **kwargs)


def _unknown_length(kind, x, y, batch_size=32):
    """Batches whose count `fit` cannot know in advance."""
    if kind == "generator":
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda *_: True)
    assert int(dataset.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    return dataset.batch(batch_size)


UNKNOWN = pytest.mark.parametrize("kind", ["generator", "tf_data"])


@UNKNOWN
def test_second_fit_of_unknown_length_after_the_schedule_ended(data, kind):
    x, y = data
    model = compile_model(small_cnn())
    model.fit(x, y, batch_size=32, epochs=2, verbose=0,
              callbacks=[keras_dstee.DSTEE(update_freq=2, end=0.5, seed=0)])
    optimizer = model.optimizer
    before = masks(model)
    history = model.fit(_unknown_length(kind, x, y), epochs=1, verbose=0,
                        callbacks=[keras_dstee.DSTEE(update_freq=2, end=0.5, seed=0)])
    assert model.optimizer is optimizer
    # 8 more steps (Keras on TensorFlow counts one more for data of unknown
    # length, in `iterations` too).
    assert int(to_numpy(optimizer.step)) == int(to_numpy(optimizer.iterations)) >= 24
    for a, b in zip(before, masks(model)):
        np.testing.assert_array_equal(a, b)  # the schedule ended at step 8
    assert history.history["drop_fraction"] == [0.0]
    assert_budget(model)


@UNKNOWN
def test_unknown_length_needs_end_step_and_loses_nothing(data, kind):
    x, y = data
    model = compile_model(small_cnn())
    before = _weights(model)
    with pytest.raises(ValueError, match="end_step"):
        model.fit(_unknown_length(kind, x, y), epochs=1, verbose=0,
                  callbacks=[keras_dstee.DSTEE(update_freq=2, seed=0)])
    assert not isinstance(model.optimizer, keras_dstee.SparseOptimizer)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)

    callback = keras_dstee.DSTEE(update_freq=2, end_step=6, seed=0)
    model.fit(_unknown_length(kind, x, y), epochs=1, verbose=0, callbacks=[callback])
    optimizer = sparse_optimizer(model)
    assert int(to_numpy(optimizer.end_step_variable)) == 6
    assert 0 < callback.optimizer.sparsity_stats()["coverage"]
    assert_budget(model)

    # A schedule that has not ended can't be re-planned without a length.
    model.fit(x, y, batch_size=32, epochs=1, verbose=0,
              callbacks=[keras_dstee.DSTEE(update_freq=2, end_step=100, seed=0)])
    state = [to_numpy(v).copy() for v in optimizer.variables]
    with pytest.raises(ValueError, match="end_step"):
        model.fit(_unknown_length(kind, x, y), epochs=1, verbose=0,
                  callbacks=[keras_dstee.DSTEE(update_freq=2, seed=0)])
    for a, b in zip(state, optimizer.variables):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_end_step_plans_the_schedule_in_steps(data):
    x, y = data
    model = compile_model(small_cnn())
    model.fit(x, y, batch_size=32, epochs=2, verbose=0,
              callbacks=[keras_dstee.DSTEE(update_freq=2, end_step=5, seed=0)])
    optimizer = sparse_optimizer(model)
    assert int(to_numpy(optimizer.end_step_variable)) == 5
    assert int(to_numpy(optimizer.last_update)) == 4  # the last update before step 5


def test_second_fit_with_another_budget_warns_and_keeps_it(data):
    x, y = data
    model = compile_model(small_cnn())
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(seed=0, update_freq=1)])
    before = masks(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the same settings: no warning
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(update_freq=1)])
    with pytest.warns(UserWarning, match=r"budget sparsity 0\.9\d+ over 4 kernels \(asked: sparsity 0\.5\d* over 4 kernels"):
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                            callbacks=[keras_dstee.DSTEE(sparsity=0.5, distribution="uniform")])
    assert history.history["sparsity"][0] == pytest.approx(0.9, abs=0.002)
    with pytest.warns(UserWarning, match=r"over 4 kernels \(asked: sparsity 0\.\d+ over 2 kernels"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                  callbacks=[keras_dstee.DSTEE(exclude=keras.layers.Dense)])
    for a, b in zip(before, masks(model)):
        assert a.sum() == b.sum()
    assert_budget(model)


def _tensorboard_tags(folder):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(f"{folder}/**/events.out.tfevents.*", recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.parametrize("sparse_first", [True, False], ids=["sparse_first", "loggers_first"])
def test_metrics_reach_every_logger_in_any_order(data, tmp_path, sparse_first):
    x, y = data
    model = compile_model(small_cnn())
    loggers = [
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
    ]
    sparse = keras_dstee.DSTEE(update_freq=2, seed=0)
    callbacks = [sparse, *loggers] if sparse_first else [*loggers, sparse]
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=callbacks)
    keys = ("sparsity", "zero_fraction", "coverage", "drop_fraction")
    for key in keys:
        assert len(history.history[key]) == 2
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    for key in keys:
        assert [float(r[key]) for r in rows] == pytest.approx(history.history[key])
    assert {f"epoch_{key}" for key in keys} <= _tensorboard_tags(tmp_path / "tb")


def test_logged_sparsity_is_the_one_asked_for(data):
    x, y = data
    model = compile_model(small_cnn())
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0,
                        callbacks=[keras_dstee.DSTEE(sparsity=0.5, update_freq=3, seed=0)])
    optimizer = sparse_optimizer(model)
    # ERK keeps the small classifier dense; it still counts, as in `sparsity=`.
    assert len(optimizer.budget) == 4 and len(optimizer.kernels) == 3
    size = sum(math.prod(v.shape) for v, _ in optimizer.budget)
    expected = 1 - sum(active for _, active in optimizer.budget) / size
    assert abs(expected - 0.5) < 1e-3
    assert history.history["sparsity"] == [pytest.approx(expected, abs=1e-12)] * 2
    assert all(z >= s for z, s in zip(history.history["zero_fraction"], history.history["sparsity"]))
    report = keras_dstee.summary(model, print_fn=lambda line: None)
    assert report["total"]["sparsity"] == pytest.approx(expected, abs=1e-12)
    zeros = sum(int(np.sum(to_numpy(v) == 0)) for v, _ in optimizer.budget)
    assert report["total"]["zero_fraction"] == pytest.approx(zeros / size, abs=1e-12)
    assert history.history["zero_fraction"][-1] == pytest.approx(zeros / size, abs=1e-12)
