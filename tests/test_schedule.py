"""`training/schedule.py`, the one home of every "when": the host's and the
step's answers to "is a mask update due" agree, the planned update count is
what the step does, and the channel and pruning schedules hit their ends."""

import keras
import numpy as np
import pytest

from keras_dstee.training import schedule


@pytest.mark.parametrize("at_end", [False, True])
def test_update_due_on_the_host_and_in_the_step_agree(at_end):
    start, end, freq = 3, 17, 4
    for step in range(0, 25):
        host = schedule.update_due(step, start, end, freq, at_end)
        tensor = schedule.update_due(keras.ops.convert_to_tensor(step), start, end, freq, at_end)
        assert bool(keras.ops.convert_to_numpy(tensor)) == host, step
        assert host == ((step % freq == 0 and start <= step < end) or (at_end and step == end))


@pytest.mark.parametrize("at_end", [False, True])
def test_planned_updates_count_the_due_steps(at_end):
    start, end, freq = 3, 17, 4
    for first in range(1, 20):
        for last in range(first, 22):
            due = sum(schedule.update_due(s, start, end, freq, at_end) for s in range(max(first, start), min(last, end - 1) + 1))
            final = at_end and first <= end <= last
            counted = schedule.planned_updates(
                max(first, start), min(last, end - 1), end, freq, at_end, run_end=last
            )
            assert counted == due + final, (first, last)


def test_planned_steps_of_a_fit():
    assert schedule.planned_steps(0.1, 0.75, None, steps_per_epoch=10, epochs=4) == (4, 30)
    assert schedule.planned_steps(0.1, 0.75, 200, steps_per_epoch=None, epochs=4) == (20, 200)
    assert schedule.planned_steps(0.0, 0.75, None, steps_per_epoch=None, epochs=4) is None
    assert schedule.planned_steps(0.0, 0.01, None, steps_per_epoch=2, epochs=1) == (0, 1)  # at least one step


def _value(x):
    return float(keras.ops.convert_to_numpy(x))


def test_channel_and_pruning_schedules_reach_their_ends():
    total, sparsity = 40, 0.5
    removed = [_value(schedule.removed_channels(t, 10, 50, sparsity, total)) for t in range(0, 60, 5)]
    assert removed[0] == removed[2] == 0 and removed[-1] == sparsity * total
    assert removed == sorted(removed)
    # With `begin`, nothing goes before that fraction of the schedule.
    assert _value(schedule.removed_channels(29, 10, 50, sparsity, total, begin=0.5)) == 0
    assert _value(schedule.removed_channels(50, 10, 50, sparsity, total, begin=0.5)) == sparsity * total
    density = [_value(schedule.scheduled_density(t, 0, 100, 1.0, 0.1)) for t in (0, 50, 100, 150)]
    np.testing.assert_allclose(density, [1.0, 0.1 + 0.9 * 0.125, 0.1, 0.1], rtol=1e-6)
    assert schedule.fraction_of_schedule(0.3, 0.1, 0.6) == pytest.approx(0.4)


def test_channel_end_front_loads_the_channel_schedule():
    total, start, end = 100, 0, 100
    full = [float(keras.ops.convert_to_numpy(schedule.removed_channels(s, start, end, 0.5, total))) for s in range(101)]
    early = [float(keras.ops.convert_to_numpy(schedule.removed_channels(s, start, end, 0.5, total, 0.0, 0.25)))
             for s in range(101)]
    assert early[25] == full[100] == 50 and early[100] == 50
    assert full[25] < 50 and all(e >= f for e, f in zip(early, full))
    assert not schedule.removal_over(24, start, end, 0.25) and schedule.removal_over(25, start, end, 0.25)


def test_a_rebuild_is_due_for_enough_channels_only():
    # While channels go: a tenth of them; once the schedule is over: 2 %.
    assert not schedule.shrink_due(9, 100, removal_over=False)
    assert schedule.shrink_due(10, 100, removal_over=False)
    assert schedule.shrink_due(2, 100, removal_over=True)
    assert not schedule.shrink_due(1, 2752, removal_over=True)
    assert not schedule.shrink_due(0, 100, removal_over=True)
