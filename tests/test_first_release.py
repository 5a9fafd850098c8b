"""What a new user tripped over before the first release, each fixed and
checked: an uncalled subclassed model, short runs without mask updates,
unchecked `layer_densities`, misspelt arguments, a clamped pruning start,
`summary` after a custom loop, and the package's version."""

import importlib.metadata
import os
import re
import warnings

import keras
import pytest
from helpers import compile_model
from helpers import small_cnn
from helpers import to_numpy

import keras_dstee
from keras_dstee import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(5)

    def call(self, x):
        return self.out(self.hidden(keras.ops.reshape(x, (-1, 8 * 8 * 3))))


def test_a_built_but_never_called_subclassed_model_is_told_to_call_it(data):
    x, y = data
    model = Subclassed()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: the model has no build()
        model.build((None, 8, 8, 3))
    with pytest.raises(ValueError, match=r"layers \['dense(_\d+)?', 'dense_\d+'\] are not.*Call the model on a batch"):
        keras_dstee.layer_densities(model, 0.9)
    model(x[:1])
    compile_model(model)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                        callbacks=[keras_dstee.DSTEE(update_freq=1, seed=0)])
    assert history.history["sparsity"][0] == pytest.approx(0.9, abs=0.01)


def _plans(caught):
    return [str(w.message) for w in caught if "mask update(s) in this fit" in str(w.message)]


@pytest.mark.parametrize(
    "callback, expected",
    [
        (lambda: keras_dstee.DSTEE(sparsity=0.9), "plans 0 mask update(s) in this fit (8 optimizer steps; update_freq=100"),
        (lambda: keras_dstee.RigL(update_freq=2), "plans 2 mask update(s)"),
        (lambda: keras_dstee.GMP(update_freq=10), "plans 1 mask update(s)"),  # only at `end`
        (lambda: keras_dstee.DSTEE(update_freq=1), None),  # steps 1-5: 5 updates
        (lambda: keras_dstee.Static(), None),  # never updates, by design
        # Channels go at `end` too: the announced update is that one.
        (lambda: keras_dstee.Static(channel_sparsity=0.3, update_freq=10), "plans 1 mask update(s)"),
        # Already every step: the advice is a longer run or a later end, not update_freq.
        (lambda: keras_dstee.DSTEE(update_freq=1, end=0.25), "plans 1 mask update(s)"),
    ],
    ids=["none", "two", "gmp_end_only", "enough", "static", "static_channels_end_only", "every_step_already"],
)
def test_short_runs_warn_how_many_mask_updates_they_make(data, callback, expected):
    x, y = data  # 8 steps per epoch; masks fixed after step 6
    model = compile_model(small_cnn())
    callback = callback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    if expected is None:
        assert _plans(caught) == []
        return
    (message,) = _plans(caught)
    assert expected in message
    if callback.update_freq == 1:
        assert "No update_freq gives 5 in this run: train longer" in message and "(end=0.25)" in message
    else:
        assert "Use update_freq=1, or train longer" in message and "or lower" not in message
    updates = int(to_numpy(callback.optimizer.last_update)) // max(callback.update_freq, 1)
    # What it announced is what happened: the last update's step says how many.
    at_end_only = isinstance(callback, keras_dstee.GMP) or callback.channel_sparsity > 0
    assert int(re.search(r"plans (\d+)", message).group(1)) == (1 if at_end_only else updates)
    if callback.channel_sparsity > 0:
        assert "the channels go in a few steps" in message


@pytest.mark.parametrize("sparsity", [1.2, -0.5, "0.9", None])
def test_layer_densities_checks_its_arguments(sparsity):
    model = small_cnn()
    with pytest.raises(ValueError, match="`sparsity` must be a number in \\[0, 1\\)"):
        keras_dstee.layer_densities(model, sparsity)
    with pytest.raises(ValueError, match="erk_power_scale"):
        keras_dstee.layer_densities(model, 0.9, erk_power_scale=-1)


def test_densities_that_leave_everything_dense_warn():
    model = small_cnn()
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(), {v.path: 1.0 for v in model.trainable_variables if len(v.shape) > 1}, end_step=10
    )
    with pytest.warns(UserWarning, match="trains no kernel sparse"):
        optimizer.build(model.trainable_variables)


def test_a_misspelt_argument_lists_every_argument():
    with pytest.raises(ValueError, match=r"DSTEE does not take `sparsty`\. Did you mean `sparsity`\?") as error:
        keras_dstee.DSTEE(sparsty=0.9)
    for name in ("sparsity", "update_freq", "block_size", "initial_mask", "exploration", "epsilon"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match=r"RigL does not take `exploration`\. Its arguments: sparsity"):
        keras_dstee.RigL(exploration=1.0)


@pytest.mark.parametrize(
    "make", [lambda: keras_dstee.GMP(initial_sparsity=0.95, sparsity=0.9), lambda: keras_dstee.GraNet(sparsity=0.3)],
    ids=["gmp", "granet_default_start"],
)
def test_a_pruning_start_above_the_target_is_refused(make):
    with pytest.raises(ValueError, match=r"`initial_sparsity=0\.\d+` is above `sparsity=0\.\d+`"):
        make()


def test_summary_after_a_custom_loop_counts_the_masks():
    model = small_cnn()
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(), keras_dstee.layer_densities(model, 0.9), end_step=10
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()
    # An active weight that happens to be exactly 0 (as a grown one is).
    kernel = optimizer.kernels[0]
    weight = to_numpy(kernel.variable).copy()
    weight[to_numpy(kernel.mask) > 0] = 0.0
    kernel.variable.assign(weight)
    lines = []
    masks = keras_dstee.summary(model, optimizer=optimizer, print_fn=lines.append)["total"]
    active = sum(int(to_numpy(k.mask).sum()) for k in optimizer.kernels)
    assert masks["from"] == "masks" and masks["active"] == active
    assert "(masks)" in lines[-1]
    zeros = keras_dstee.summary(model, print_fn=lines.append)["total"]
    assert zeros["from"] == "zeros" and zeros["sparsity"] > masks["sparsity"]
    assert "(masks)" not in lines[-1] and "pass `optimizer=`" in lines[-1]
    with pytest.raises(ValueError, match="SparseOptimizer"):
        keras_dstee.summary(model, optimizer=keras.optimizers.SGD())
    with pytest.raises(ValueError, match="another model"):
        keras_dstee.summary(small_cnn(1), optimizer=optimizer)


def test_one_version_everywhere(capsys):
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        changelog = f.read()
    assert f"## {keras_dstee.__version__}\n" in changelog
    assert importlib.metadata.version("keras-dstee") == keras_dstee.__version__
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["--version"])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.strip() == f"keras-dstee {keras_dstee.__version__}"
    assert os.path.isfile(os.path.join(ROOT, "LICENSE"))

