"""Every "when" of sparse training, in one place.

A run's mask-update schedule spans optimizer steps `[start, end)`: masks
update every `update_freq` steps inside it, and a method with a density
schedule (GMP, GraNet) or channel removal also updates at `end` itself,
where its schedule reaches its target. Within the schedule, `progress` runs
from 0 to 1; the drop fraction decays along a cosine, pruning densities and
removed channels follow a cubic. The callbacks plan `[start, end)` from
`fit`'s length (fractions of the run), the optimizer decides at each step
whether one is due, and the channel state reads how many channels should be
gone: all of them ask here.

The tensor functions take tensors or Python numbers and run inside the
compiled step on every backend.
"""

import math

from keras import ops

# Fewer mask updates than this in one `fit` get a warning.
FEW_UPDATES = 5


def progress_at(step, start_step, end_step):
    """How far the mask-update schedule has got: 0 at `start_step`, 1 at
    `end_step` and after it."""
    step = ops.cast(step, "float32")
    start = ops.cast(start_step, "float32")
    end = ops.cast(end_step, "float32")
    return ops.clip((step - start) / ops.maximum(end - start, 1.0), 0.0, 1.0)


def cosine_decay(progress):
    """1 at progress 0, falling along a half cosine to 0 at progress 1."""
    return 0.5 * (1.0 + ops.cos(math.pi * progress))


def drop_fraction_at(step, start_step, end_step, drop_fraction):
    """Cosine decay of the drop fraction: `drop_fraction` at `start_step`, 0 at
    `end_step` and after it."""
    return drop_fraction * cosine_decay(progress_at(step, start_step, end_step))


def scheduled_density(step, start_step, end_step, initial, final):
    """Gradual pruning's cubic schedule (Zhu & Gupta, 2017) in densities:
    `final + (initial - final) * (1 - progress)**3`, `initial` at
    `start_step`, `final` at `end_step` and after it."""
    progress = progress_at(step, start_step, end_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def removed_channels(step, start_step, end_step, channel_sparsity, total, begin=0.0, end=1.0):
    """How many of `total` removable channels are gone at `step`: none until
    `begin` (a fraction of the schedule), then a cubic rise to
    `channel_sparsity * total` at `end` (a fraction of the schedule; 1:
    `end_step`, Chase's schedule)."""
    progress = progress_at(step, start_step, end_step)
    if begin > 0 or end < 1:
        progress = ops.clip((progress - begin) / (end - begin), 0.0, 1.0)
    return ops.round(channel_sparsity * total * (1.0 - (1.0 - progress) ** 3))


def updates_at_end(prunes, channel_sparsity):
    """Whether the schedule also updates at `end` itself: a method with a
    density schedule (`prunes`) or channel removal reaches its target there."""
    return bool(prunes) or channel_sparsity > 0


def update_due(step, start, end, update_freq, at_end):
    """Whether optimizer step `step` updates the masks: every `update_freq`
    steps in `[start, end)`, and at `end` when `at_end`. Plain Python with
    integers (eager torch's host clock), a boolean tensor otherwise."""
    if all(isinstance(v, int) for v in (step, start, end)):
        regular = step % update_freq == 0 and start <= step < end
        return regular or (at_end and step == end)
    step = ops.convert_to_tensor(step)
    regular = ops.logical_and(
        ops.equal(step % update_freq, 0),
        ops.logical_and(ops.greater_equal(step, start), ops.less(step, end)),
    )
    if at_end:
        return ops.logical_or(regular, ops.equal(step, end))
    return regular


def planned_steps(begin, end, end_step, steps_per_epoch, epochs):
    """`(start, end)` of a `fit`'s schedule in its own optimizer steps, from
    `begin` and `end` (fractions of the run, or of `end_step` when given);
    None when the run's length is unknown and `end_step` is not given."""
    if end_step is not None:
        return round(begin * end_step), end_step
    if not steps_per_epoch:
        return None
    total = steps_per_epoch * epochs
    return round(begin * total), max(1, round(end * total))


def fraction_of_schedule(fraction_of_run, begin, end):
    """A point given as a fraction of the run (`channel_begin`), as a
    fraction of the mask-update schedule `[begin, end]` (fractions of the
    run too)."""
    return (fraction_of_run - begin) / (end - begin)


def updates_between(first, last, update_freq):
    """How many multiples of `update_freq` lie in [first, last]."""
    return max(0, last // update_freq - (first - 1) // update_freq)


def planned_updates(first, last, end, update_freq, at_end, run_end=None):
    """How many mask updates steps `first` to `last` make, with the one at
    `end` itself when `at_end` (and the run reaches it: `run_end`, None when
    unknown)."""
    final = int(at_end and first <= end and (run_end is None or end <= run_end))
    return updates_between(first, last, update_freq) + final


def is_over(step, end):
    """Whether a schedule ending at `end` has ended by `step`."""
    return step >= end


# A run that shrinks rebuilds at an epoch end once this fraction of the
# model's removable channels is gone but still computed (each rebuild
# costs a recompile), and once the channels have reached their target, for
# the rest if it is at least SHRINK_LAST of them: a channel that dies
# later is not worth a recompile (measured: VGG-19 lost 1 of 2,752 four
# epochs after the schedule ended).
SHRINK_AT = 0.1
SHRINK_LAST = 0.02


def shrink_due(cuttable, channels, removal_over):
    """Whether a run that shrinks rebuilds now: `cuttable` of the model's
    `channels` removable channels are gone but still in it; `removal_over`
    whether the channel schedule has reached its target."""
    least = SHRINK_LAST if removal_over else SHRINK_AT
    return cuttable > 0 and cuttable >= least * channels


def removal_over(step, start_step, end_step, channel_end=1.0):
    """Whether the channel schedule (ending at `channel_end`, a fraction of
    the mask-update schedule `[start_step, end_step]`) is over at `step`
    (host integers)."""
    return step >= start_step + channel_end * (end_step - start_step)
