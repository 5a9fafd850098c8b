"""`channel_sparsity=`: whole channels removed during training on a cubic
schedule, at an exact weight budget, with every method; removed channels
output exactly 0 and `slim` cuts them out; resumes bit for bit; 0 changes
nothing."""

import warnings

import keras
import numpy as np
import pytest
from helpers import EveryStep
from helpers import compile_model
from helpers import sparse_optimizer
from helpers import to_numpy
from test_channels import densenet_style
from test_channels import resnet_style
from test_channels import vgg_style
from test_saving import StopAfter

import keras_dstee
from keras_dstee.structure import liveness
from keras_dstee.training import channel_sparsity

STYLES = {"vgg": vgg_style, "resnet": resnet_style, "densenet": densenet_style}


def _fit(model, data, callbacks, epochs=3, **kwargs):
    x, y = data
    y = y % 2  # every model here has at least 2 outputs
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks, **kwargs)


def _alive(model):
    return to_numpy(sparse_optimizer(model).channels.alive)


def _removable(model):
    return [g for g in keras_dstee.channel_groups(model) if g.removable]


def _planned_sparsity(model):
    budget = sparse_optimizer(model).budget
    return 1 - sum(count for _, count in budget) / sum(int(np.prod(v.shape)) for v, _ in budget)


def _check_step(model, previous):
    """Exact budget, masks inside the live channels, removed channels'
    trainable weights all 0, and no channel coming back."""
    optimizer = sparse_optimizer(model)
    active = sum(int(to_numpy(k.mask).sum()) for k in optimizer.kernels)
    assert active == sum(count for _, count in optimizer.budget)
    alive = _alive(model)
    if previous:
        assert np.all(alive <= previous[-1])
    previous.append(alive)
    offset = 0
    for group in _removable(model):
        gone = np.flatnonzero(alive[offset : offset + group.size] == 0)
        offset += group.size
        for s in group.producers + group.followers + group.consumers:
            if not s.variable.trainable:
                continue
            value = to_numpy(s.variable)
            for channel in gone:
                assert not np.any(np.take(value, s.positions[channel], axis=s.axis)), (s.path, channel)
    for k in optimizer.kernels:
        assert not np.any(to_numpy(k.variable)[to_numpy(k.mask) == 0])


@pytest.mark.parametrize("style", sorted(STYLES))
def test_channels_go_on_schedule_at_an_exact_budget(style, data):
    model = compile_model(STYLES[style]())
    history = []
    check = EveryStep(lambda m, batch: _check_step(m, history))
    callback = keras_dstee.DSTEE(sparsity=0.8, channel_sparsity=0.5, update_freq=2, seed=1)
    logs = _fit(model, data, [callback, check]).history
    total = sum(g.size for g in _removable(model))
    alive = _alive(model)
    # The schedule ends at step 18 (0.75 of 24): at least half the channels gone.
    assert total - alive.sum() >= round(0.5 * total)
    assert alive.sum() < history[0].sum() or history[0].sum() < total
    assert logs["live_channels"][-1] == pytest.approx(
        liveness.live_fraction(keras_dstee.channel_groups(model), {id(k.variable): k.mask for k in sparse_optimizer(model).kernels})
    )
    assert logs["live_channels"][-1] <= alive.sum() / total
    assert logs["sparsity"][-1] == pytest.approx(_planned_sparsity(model))
    # Every group keeps its floor.
    offset = 0
    for group, floor in zip(_removable(model), sparse_optimizer(model).channels.floors):
        assert alive[offset : offset + group.size].sum() >= floor
        offset += group.size


def _live_by_masks(model):
    """Per removable channel, whether its masks still give it fan-in and
    fan-out (a channel without is dead and leaves at the next update)."""
    masks = {id(k.variable): to_numpy(k.mask) for k in sparse_optimizer(model).kernels}
    return np.concatenate([liveness.live_channels(g, masks) for g in _removable(model)])


@pytest.mark.parametrize("channel_begin", [None, 0.5])
def test_channels_wait_for_channel_begin(channel_begin, data):
    """The masks update from the first step; channels go only after
    `channel_begin` of the run (step 12 of 24 here; before it only dead
    channels leave), then reach their target by `end` (step 18)."""
    model = compile_model(vgg_style())
    seen = {}

    def record(m, batch):
        seen[int(to_numpy(sparse_optimizer(m).step))] = (_alive(m), _live_by_masks(m))

    callback = keras_dstee.DSTEE(sparsity=0.8, channel_sparsity=0.5, update_freq=2, seed=1, channel_begin=channel_begin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(model, data, [callback, EveryStep(record)])
    # Steps at which a channel the masks kept alive was removed: the schedule's removals.
    scheduled = [
        step for step in range(2, 25) if np.any((seen[step][0] == 0) & (seen[step - 1][0] == 1) & seen[step - 1][1])
    ]
    assert scheduled[0] == (2 if channel_begin is None else 14)
    assert scheduled[-1] <= 18  # the schedule ends at `end`
    total = sparse_optimizer(model).channel_plan.total
    assert total - seen[24][0].sum() >= round(0.5 * total)
    expected = 0.0 if channel_begin is None else pytest.approx(0.5 / 0.75)
    assert sparse_optimizer(model).get_config()["channel_begin"] == expected
    # 4 updates from step 12 on: the warning counts those that remove channels.
    few = [str(w.message) for w in caught if "removing channels (channel_begin=0.5)" in str(w.message)]
    assert len(few) == (0 if channel_begin is None else 1)


def test_removed_channels_output_exactly_zero_and_slim_cuts_them(data):
    model = compile_model(vgg_style())
    _fit(model, data, [keras_dstee.RigL(sparsity=0.8, channel_sparsity=0.5, update_freq=2, seed=3)])
    alive = _alive(model)
    conv1 = _removable(model)[0]
    assert conv1.layers == ["conv1"]
    gone = np.flatnonzero(alive[: conv1.size] == 0)
    assert len(gone) > 0
    probe = keras.Model(model.inputs, model.get_layer("bn1").output)
    out = to_numpy(probe(data[0][:16], training=False))
    assert not np.any(out[..., gone])
    slimmed = keras_dstee.slim(model)
    assert slimmed.get_layer("conv1").filters == conv1.size - len(gone)
    np.testing.assert_allclose(
        to_numpy(slimmed(data[0][:16], training=False)), to_numpy(model(data[0][:16], training=False)), atol=1e-5
    )
    assert slimmed.count_params() < model.count_params()


@pytest.mark.parametrize("method", ["dstee", "rigl", "set", "static", "gmp", "granet"])
def test_every_method_removes_channels_at_its_budget(method, data):
    model = compile_model(resnet_style())
    history = []
    check = EveryStep(lambda m, batch: _check_step(m, history) if method in ("static", "set") else None)
    callback = keras_dstee.SparseTraining(method, sparsity=0.8, channel_sparsity=0.3, update_freq=2, seed=2)
    if method == "static":
        callback = keras_dstee.Static(sparsity=0.8, channel_sparsity=0.3, update_freq=2, seed=2)
    logs = _fit(model, data, [callback, check]).history
    optimizer = sparse_optimizer(model)
    assert logs["sparsity"][-1] == pytest.approx(_planned_sparsity(model))
    active = sum(int(to_numpy(k.mask).sum()) for k in optimizer.kernels)
    assert active == sum(c for _, c in optimizer.budget)
    total = optimizer.channel_plan.total
    assert total - _alive(model).sum() >= round(0.3 * total)


def test_resume_in_the_middle_of_the_channel_schedule_is_bit_for_bit(data, tmp_path):
    def callback():
        return keras_dstee.DSTEE(sparsity=0.8, channel_sparsity=0.5, update_freq=3, seed=4)

    whole = compile_model(vgg_style())
    _fit(whole, data, [callback()], epochs=4)
    model = compile_model(vgg_style())
    _fit(model, data, [callback(), StopAfter(8)], epochs=4)
    removed_so_far = optimizer_total = sparse_optimizer(model).channel_plan.total
    removed_so_far -= _alive(model).sum()
    assert 0 < removed_so_far < 0.5 * optimizer_total  # stopped in the middle
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert sparse_optimizer(loaded).get_config() == sparse_optimizer(model).get_config()
    _fit(loaded, data, [callback()], epochs=4, initial_epoch=1)
    for a, b in zip(whole.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for a, b in zip(whole.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_channel_sparsity_zero_changes_nothing(data):
    runs = []
    for extra in ({}, {"channel_sparsity": 0.0, "min_channels": 0.2}):
        model = compile_model(vgg_style())
        _fit(model, data, [keras_dstee.DSTEE(sparsity=0.8, update_freq=2, seed=5, **extra)])
        runs.append(model)
    a, b = runs
    assert len(a.optimizer.variables) == len(b.optimizer.variables)
    assert "channels_alive" not in [v.name for v in b.optimizer.variables]
    assert "channel_sparsity" not in b.optimizer.get_config()
    assert sparse_optimizer(b).channels is None
    for x, y in zip(a.optimizer.variables + a.weights, b.optimizer.variables + b.weights):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


def test_dead_channels_count_without_channel_sparsity(data):
    model = compile_model(vgg_style())
    # 3 of conv1's 162 weights active: at least 3 of its 6 channels are dead.
    callback = keras_dstee.Static(sparsity=0.98, distribution="uniform", seed=0)
    logs = _fit(model, data, [callback], epochs=1).history
    masks = {k.variable.path.split("/")[-2]: to_numpy(k.mask) for k in sparse_optimizer(model).kernels}
    conv1, conv2, head = masks["conv1"], masks["conv2"], masks["head"]
    # By hand: a channel lives with an active weight in and one out.
    live1 = conv1.any(axis=(0, 1, 2)) & conv2.any(axis=(0, 1, 3))
    live2 = conv2.any(axis=(0, 1, 2)) & head.reshape(-1, 5, 4).any(axis=(0, 2))
    expected = (live1.sum() + live2.sum()) / 11
    assert expected < 0.75
    assert logs["live_channels"][-1] == pytest.approx(expected)
    lines = []
    report = keras_dstee.summary(model, print_fn=lines.append)
    conv1_row = next(r for r in report["kernels"] if r["layer"] == "conv1")
    assert (conv1_row["live_channels"], conv1_row["channels"]) == (live1.sum(), 6)
    assert any("Live channels" in line for line in lines)


def test_min_channels_without_channel_sparsity_warns(data):
    with pytest.warns(UserWarning, match="min_channels=0.5. has no effect with channel_sparsity=0"):
        callback = keras_dstee.DSTEE(min_channels=0.5, update_freq=2)
    assert callback.channel_sparsity == 0
    # Once: training does not repeat it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(compile_model(vgg_style()), data, [callback])
    assert not [w for w in caught if "min_channels" in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_dstee.DSTEE(channel_sparsity=0.5, min_channels=0.5)
        keras_dstee.DSTEE(min_channels=0.2)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"channel_sparsity": 1.0}, "channel_sparsity"),
        ({"channel_sparsity": -0.1}, "channel_sparsity"),
        ({"channel_sparsity": "0.5"}, "channel_sparsity"),
        ({"channel_sparsity": 0.3, "min_channels": 2}, "min_channels"),
        ({"channel_sparsity": 0.3, "block_size": (4, 1)}, "block_size"),
        ({"channel_begin": 0.3}, "channel_begin=0.3. has no effect with channel_sparsity=0"),
        ({"channel_sparsity": 0.3, "channel_begin": 0.75}, "channel_begin"),
        ({"channel_sparsity": 0.3, "begin": 0.2, "channel_begin": 0.1}, "channel_begin"),
    ],
)
def test_bad_channel_settings_are_refused_at_construction(settings, words):
    with pytest.raises(ValueError, match=words):
        keras_dstee.DSTEE(**settings)


def _unchanged_after_refusal(model, data, callback, words):
    before = [to_numpy(w).copy() for w in model.weights]
    optimizer = model.optimizer
    with pytest.raises(ValueError, match=words):
        _fit(model, data, [callback], epochs=1)
    assert model.optimizer is optimizer
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_a_model_without_removable_channels_is_refused_with_the_reasons(data):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    compile_model(model)
    _unchanged_after_refusal(
        model, data, keras_dstee.DSTEE(channel_sparsity=0.3), r"channel_sparsity.*model's output"
    )


def test_a_subclassed_model_is_refused(data):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.head = keras.layers.Dense(5)

        def call(self, x):
            return self.head(keras.ops.mean(self.conv(x), axis=(1, 2)))

    model = Net()
    model(data[0][:1])
    compile_model(model)
    _unchanged_after_refusal(model, data, keras_dstee.DSTEE(channel_sparsity=0.3), "subclassed")


def test_a_channel_sparsity_the_budget_cannot_fit_is_refused(data):
    model = compile_model(vgg_style())
    _unchanged_after_refusal(
        model, data, keras_dstee.DSTEE(sparsity=0.1, channel_sparsity=0.9, min_channels=0.0), "channel_sparsity"
    )


def test_share_budget_keeps_the_total():
    ops = keras.ops
    base = ops.convert_to_tensor(np.array([50, 10, 30, 7], "int32"))
    capacity = ops.convert_to_tensor(np.array([20, 40, 30, 100], "int32"))
    shared = to_numpy(channel_sparsity.share_budget(base, capacity))
    assert shared.sum() == 97
    assert np.all(shared <= to_numpy(capacity))
    assert shared[0] == 20 and shared[2] == 30  # full kernels hold what fits
    # The 30 weights kernel 0 can't hold go to kernels 1 and 3, by free room.
    assert list(shared[[1, 3]] - [10, 7]) == [8, 22]


@pytest.mark.parametrize(
    "active, target, expected",
    [
        (100, 100, (0, 25, 25)),  # steady state: swap a quarter of the kernel
        (120, 100, (20, 25, 25)),  # over target: prune 20, then swap
        # Most weights just left with their channels: swap a quarter of the
        # 10 trained ones left, not of the target (which took all ten).
        (10, 100, (0, 3, 93)),
    ],
)
def test_a_channel_update_swaps_a_fraction_of_the_weights_it_keeps(active, target, expected):
    mask = np.zeros(400, "float32")
    mask[:active] = 1.0
    allowed = np.zeros(400, "float32")
    allowed[:300] = 1.0
    ops = keras.ops
    counts = channel_sparsity.update_counts(
        ops.convert_to_tensor(mask), ops.convert_to_tensor(allowed), ops.convert_to_tensor(target, "int32"), 0.25
    )
    assert tuple(int(to_numpy(c)) for c in counts) == expected
