"""Channel-level sparsity during training (`channel_sparsity=`), after Chase.

At mask updates whole channels of the removable groups
(`keras_dstee.channel_groups`) are removed, ranked globally by their unmasked
mean magnitude (the L1 norm of the producing kernels' slices over their dense
size), along a cubic schedule to `channel_sparsity` of the removable channels
at the schedule's end (starting after a `begin` fraction of it, as Chase
waits for the ranking to mean something), never below a floor per group. A
removed channel's fan-in, fan-out, biases and per-channel scales and shifts
are masked to exactly 0, so it outputs exactly 0 and `keras_dstee.slim` can
cut it out; it never returns. Channels whose fan-in or fan-out has no active weight left are
dead and count as removed.

The weight budget stays exact: the weights a kernel loses with its channels
are grown again inside its live channels; a kernel whose live area can no
longer hold its budget keeps all of it, and the rest of its budget moves to
the other kernels in proportion to their free live room.

`ChannelPlan` is the groups by variable position (what the optimizer saves in
its config); `ChannelState` the optimizer's part: the `alive` variable and
the tensor functions of the step.
"""

import dataclasses
import math
import warnings

import numpy as np
from keras import ops

from keras_dstee import arguments
from keras_dstee.training import schedule
from keras_dstee.training import updates
from keras_dstee.training.constraints import MaskConstraint

ROLES = ("producer", "follower", "consumer")


@dataclasses.dataclass
class ChannelAxis:
    """One axis of one trainable variable whose positions belong to channels:
    `index[p]` is the channel (in the plan's concatenated numbering) of
    position `p`, or -1 for a position of no removable group."""

    position: int
    axis: int
    role: str
    index: np.ndarray


@dataclasses.dataclass
class ChannelPlan:
    """The removable channel groups of a model, by trainable-variable position.

    Attributes:
        sizes: channels of each removable group, in `channel_groups` order.
        layers: the producing layers' names of each group (for messages).
        axes: every `ChannelAxis`.
        original_sizes: once the model has shrunk (`without`), each group's
            channels before it did: the schedule and the floors count them.
        dense_size: once shrunk, per channel the positions its producing
            kernels had before (what its magnitude score is divided by).
    """

    sizes: list
    layers: list
    axes: list
    original_sizes: list = None
    dense_size: np.ndarray = None

    @property
    def original_total(self):
        return int(sum(self.original_sizes if self.original_sizes is not None else self.sizes))

    def without(self, gone, dense_size):
        """The plan once the channels `gone` (a bool per channel) are cut
        out of the model: their positions leave every axis and the others
        are renumbered. `dense_size`: the current per-channel sizes."""
        gone = np.asarray(gone, bool)
        renumber = np.cumsum(~gone) - 1
        axes = []
        for a in self.axes:
            keep = (a.index < 0) | ~gone[np.maximum(a.index, 0)]
            index = a.index[keep]
            axes.append(ChannelAxis(a.position, a.axis, a.role, np.where(index < 0, -1, renumber[np.maximum(index, 0)])))
        offsets = self.offsets
        sizes = [int(np.sum(~gone[offsets[g] : offsets[g + 1]])) for g in range(len(self.sizes))]
        return ChannelPlan(
            sizes=sizes,
            layers=self.layers,
            axes=axes,
            original_sizes=list(self.original_sizes if self.original_sizes is not None else self.sizes),
            dense_size=np.asarray(dense_size, "float32")[~gone],
        )

    @property
    def total(self):
        return int(sum(self.sizes))

    @property
    def offsets(self):
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    @classmethod
    def from_groups(cls, groups, var_list):
        """The plan of the removable `groups` over `var_list` (the optimizer's
        trainable variables); weights outside it (BatchNormalization's moving
        statistics) need no mask: they don't decide a removed channel's
        output once its scale and shift are 0."""
        positions = {id(v): i for i, v in enumerate(var_list)}
        removable = [g for g in groups if g.removable]
        axes = {}
        offset = 0
        for group in removable:
            for role, slices in zip(ROLES, (group.producers, group.followers, group.consumers)):
                for s in slices:
                    if id(s.variable) not in positions:
                        continue
                    axis = s.axis % len(s.variable.shape)
                    key = (positions[id(s.variable)], axis)
                    entry = axes.setdefault(key, ChannelAxis(key[0], axis, role, np.full(s.variable.shape[axis], -1)))
                    for channel, chosen in enumerate(s.positions):
                        entry.index[np.asarray(chosen, int)] = offset + channel
            offset += group.size
        return cls(
            sizes=[g.size for g in removable],
            layers=[g.layers for g in removable],
            axes=sorted(axes.values(), key=lambda a: (a.position, a.axis)),
        )

    def get_config(self):
        config = {
            "sizes": [int(s) for s in self.sizes],
            "layers": [list(names) for names in self.layers],
            "axes": [[a.position, a.axis, a.role, _runs(a.index)] for a in self.axes],
        }
        if self.original_sizes is not None:
            config["original_sizes"] = [int(s) for s in self.original_sizes]
            config["dense_size"] = [float(s) for s in self.dense_size]
        return config

    @classmethod
    def from_config(cls, config):
        axes = [ChannelAxis(p, axis, role, _from_runs(runs)) for p, axis, role, runs in config["axes"]]
        dense_size = config.get("dense_size")
        return cls(
            list(config["sizes"]),
            [list(n) for n in config["layers"]],
            axes,
            config.get("original_sizes"),
            None if dense_size is None else np.asarray(dense_size, "float32"),
        )


def _runs(index):
    """`index` as [first value, length, step] runs of arithmetic sequences:
    a Flatten's thousands of positions fit in a few numbers of the config."""
    runs, i = [], 0
    while i < len(index):
        step = int(index[i + 1] - index[i]) if i + 1 < len(index) else 0
        j = i + 1
        while j < len(index) and index[j] - index[j - 1] == step:
            j += 1
        runs.append([int(index[i]), j - i, step])
        i = j
    return runs


def _from_runs(runs):
    if not runs:
        return np.zeros(0, int)
    return np.concatenate([start + step * np.arange(length) for start, length, step in runs]).astype(int)


DEFAULT_MIN_CHANNELS = 0.2


def check_settings(channel_sparsity, min_channels):
    """The two arguments, checked; returns them as floats. A `min_channels`
    other than the default with no channel to remove warns: it does nothing."""
    channel_sparsity = arguments.number("channel_sparsity", channel_sparsity, 0, 1, high_open=True)
    min_channels = arguments.number("min_channels", min_channels, 0, 1)
    if channel_sparsity == 0 and min_channels != DEFAULT_MIN_CHANNELS:
        warnings.warn(
            f"`min_channels={min_channels:g}` has no effect with channel_sparsity=0: no channel is "
            "removed. Set `channel_sparsity` (e.g. 0.5), or leave `min_channels` out.",
            stacklevel=3,
        )
    return channel_sparsity, min_channels


def check_begin(channel_begin, channel_sparsity, low, high):
    """`channel_begin`, a number in [low, high), refused where it has no
    effect (`channel_sparsity=0`); returns it as a float."""
    return _check_point("channel_begin", channel_begin, channel_sparsity, low, high, high_open=True)


def check_end(channel_end, channel_sparsity, low, high):
    """`channel_end`, a number in (low, high], refused where it has no
    effect (`channel_sparsity=0`); returns it as a float."""
    return _check_point("channel_end", channel_end, channel_sparsity, low, high, low_open=True)


def _check_point(name, value, channel_sparsity, low, high, **open_ends):
    if channel_sparsity == 0:
        raise ValueError(
            f"`{name}={value!r}` has no effect with channel_sparsity=0: no channel "
            f"is removed. Set `channel_sparsity` (e.g. 0.5), or leave `{name}` out."
        )
    return arguments.number(name, value, low, high, **open_ends)


def removable_or_refuse(groups):
    """`groups`, if any is removable; otherwise a ValueError that lists why
    each group is not."""
    if any(g.removable for g in groups):
        return groups
    reasons = "; ".join(f"{g.layers}: {g.reason}" for g in groups) or "the model has no conv or dense layer"
    raise ValueError(
        "`channel_sparsity` needs channels that can be removed, and this model has "
        f"none: {reasons}. Use channel_sparsity=0 (the default) for this model."
    )


def check_budget(plan, var_list, budget, channel_sparsity):
    """Refuses a `channel_sparsity` whose live area, with every group at
    `1 - channel_sparsity` of its channels, could not hold the weight
    budget (`[(variable, active positions)]`)."""
    by_position = {id(v): i for i, v in enumerate(var_list)}
    axes = {}
    for a in plan.axes:
        axes.setdefault(a.position, []).append(a)
    live = 0.0
    for variable, _ in budget:
        fraction = 1.0
        for a in axes.get(by_position[id(variable)], []):
            fraction *= 1.0 - channel_sparsity * np.mean(a.index >= 0)
        live += fraction * math.prod(variable.shape)
    needed = sum(active for _, active in budget)
    if live < needed:
        raise ValueError(
            f"`channel_sparsity={channel_sparsity}` leaves about {int(live)} positions in the live "
            f"channels, fewer than the {needed} weights of the budget: lower `channel_sparsity`, "
            "or raise `sparsity`."
        )


class ChannelConstraint(MaskConstraint):
    """Zeroes a weight's positions in removed channels after every step:
    the mask is computed from the optimizer's `alive` channels."""

    def __init__(self, state, position, user_constraint=None):
        super().__init__(None, user_constraint)
        self.state = state
        self.position = position

    def current_mask(self):
        return self.state.allowed(self.position, ops.convert_to_tensor(self.state.alive))


class ChannelState:
    """The optimizer's channel state and the tensor functions of its step.

    Args:
        plan: the `ChannelPlan`.
        channel_sparsity: fraction of the removable channels removed by the
            schedule's end.
        min_channels: per group, the fraction of what the schedule would
            leave it (`(1 - channel_sparsity)` of its channels) that stays.
        alive: the optimizer's float variable of `plan.total` 0/1 flags.
        shapes: each trainable variable's shape, by position.
        begin: fraction of the mask-update schedule before channels go;
            their cubic schedule then runs over the rest of it.
        end: fraction of the mask-update schedule by which they reach
            `channel_sparsity` (1: at its end).
    """

    def __init__(self, plan, channel_sparsity, min_channels, alive, shapes, begin=0.0, end=1.0):
        self.plan = plan
        self.channel_sparsity = channel_sparsity
        self.begin = begin
        self.end = end
        self.alive = alive
        self.shapes = shapes
        self.by_position = {}
        for a in plan.axes:
            self.by_position.setdefault(a.position, []).append(a)
        # Counted over the channels before any shrinking.
        original = plan.original_sizes if plan.original_sizes is not None else plan.sizes
        self.floors = [max(1, math.ceil(min_channels * size * (1.0 - channel_sparsity))) for size in original]
        total = plan.total
        # A consumer slice that can die: the channel dies with it.
        self.read = np.zeros(total + 1, "float32")
        for a in plan.axes:
            if a.role == "consumer" and len(shapes[a.position]) > 1:
                self.read[a.index[a.index >= 0]] = 1.0
        # Per channel, how many positions its producing kernels have.
        self.dense_size = np.zeros(total + 1, "float32")
        for a in self._kernel_axes("producer"):
            per_position = math.prod(shapes[a.position]) // shapes[a.position][a.axis]
            np.add.at(self.dense_size, _segments(a.index, total), per_position)
        if plan.dense_size is not None:
            self.dense_size[:total] = plan.dense_size

    @property
    def positions(self):
        """The positions of the variables with channel slices."""
        return sorted(self.by_position)

    def _kernel_axes(self, role):
        return [a for a in self.plan.axes if a.role == role and len(self.shapes[a.position]) > 1]

    def allowed(self, position, alive):
        """0/1 tensor broadcastable to the variable at `position`: 1 where
        every channel a position belongs to is alive."""
        shape = self.shapes[position]
        extended = ops.concatenate([ops.cast(alive, "float32"), ops.ones((1,))])
        result = None
        for a in self.by_position.get(position, []):
            flags = ops.take(extended, _segments(a.index, self.plan.total))
            view = [1] * len(shape)
            view[a.axis] = shape[a.axis]
            flags = ops.reshape(flags, view)
            result = flags if result is None else result * flags
        return ops.ones((1,) * len(shape)) if result is None else result

    def _per_channel(self, axes, values):
        """Sums each variable's `values[position]` over its other axes and
        adds them up per channel: a vector of `total + 1` (the last entry
        collects positions of no group)."""
        total = self.plan.total
        result = ops.zeros((total + 1,))
        for a in axes:
            value = values.get(a.position)
            if value is None:
                continue
            other = [i for i in range(len(self.shapes[a.position])) if i != a.axis]
            per_position = ops.sum(ops.cast(value, "float32"), axis=other) if other else value
            result = result + ops.segment_sum(per_position, _segments(a.index, total), num_segments=total + 1)
        return result

    def next_alive(self, step, start, end, masks, weights):
        """The channels alive after this update.

        Args:
            step, start, end: the optimizer step and the schedule's bounds.
            masks: position -> current 0/1 mask of the masked kernels.
            weights: position -> current value of every kernel.
        """
        total = self.plan.total
        alive = ops.cast(ops.convert_to_tensor(self.alive), "float32")
        # Dead: no active fan-in, or read by kernels with no active fan-out.
        active = {p: masks.get(p, ops.ones_like(w)) for p, w in weights.items()}
        fan_in = self._per_channel(self._kernel_axes("producer"), active)[:total]
        fan_out = self._per_channel(self._kernel_axes("consumer"), active)[:total]
        read = ops.convert_to_tensor(self.read[:total] > 0)
        dead = ops.logical_or(ops.equal(fan_in, 0.0), ops.logical_and(read, ops.equal(fan_out, 0.0)))
        alive = alive * (1.0 - ops.cast(dead, "float32"))
        magnitude = {p: ops.abs(w) for p, w in weights.items()}
        dense_size = ops.convert_to_tensor(np.maximum(self.dense_size, 1.0))
        score = self._per_channel(self._kernel_axes("producer"), magnitude) / dense_size
        score = score[:total]
        original = self.plan.original_total
        goal = schedule.removed_channels(step, start, end, self.channel_sparsity, original, self.begin, self.end)
        # Channels cut out by shrinking are gone too.
        gone = (original - total) + (total - ops.sum(alive))
        wanted = ops.cast(ops.maximum(goal - gone, 0.0), "int32")
        eligible = self._eligible(alive, score)
        left, _ = updates.drop_and_grow(score, eligible, None, wanted, total, 0, 0)
        return alive * (1.0 - (eligible - left))

    def update(self, kernels, base, weights, step, start, end):
        """One channel update inside the mask update.

        Args:
            kernels: the optimizer's masked kernels (`SparseKernel`).
            base: per kernel, how many weights its method wants it to hold.
            weights: position -> current value of every channel variable.
            step, start, end: the optimizer step and the schedule's bounds.

        Returns:
            `(alive, allowed, target)`: the new alive flags, and per kernel
            its live area (0/1, its shape) and how many weights it holds.
        """
        masks = {k.index: ops.convert_to_tensor(k.mask) for k in kernels}
        kernel_weights = {p: w for p, w in weights.items() if len(self.shapes[p]) > 1}
        alive = self.next_alive(step, start, end, masks, kernel_weights)
        allowed = [ops.broadcast_to(self.allowed(k.index, alive), k.variable.shape) for k in kernels]
        capacity = ops.stack([ops.cast(ops.sum(a), "int32") for a in allowed])
        target = share_budget(ops.stack([ops.cast(b, "int32") for b in base]), capacity)
        return alive, allowed, [target[i] for i in range(len(kernels))]

    def _eligible(self, alive, score):
        """1 for the alive channels a group can lose above its floor: its
        lowest-scoring ones."""
        pieces = []
        offsets = self.plan.offsets
        for g, floor in enumerate(self.floors):
            a, s = alive[offsets[g] : offsets[g + 1]], score[offsets[g] : offsets[g + 1]]
            ranked = ops.where(a > 0, s, ops.full_like(s, np.inf))
            rank = ops.argsort(ops.argsort(ranked))
            room = ops.sum(a) - floor
            pieces.append(a * ops.cast(ops.cast(rank, "float32") < room, "float32"))
        return ops.concatenate(pieces)


def share_budget(base, capacity):
    """Per kernel, how many weights it holds: `base` (its budget) where its
    live `capacity` allows; what the others cannot hold goes to the kernels
    with free live room, in proportion to it (the remainder one by one in
    order), so the total stays `sum(base)` whenever the live area holds it.
    Both are int32 vectors; returns one."""
    keep = ops.minimum(base, capacity)
    overflow = ops.sum(base - keep)
    spare = capacity - keep
    total_spare = ops.sum(spare)
    need = ops.minimum(overflow, total_spare)
    # float32 rounding must not overshoot: a hair below the exact share.
    ratio = ops.cast(spare, "float32") / ops.maximum(ops.cast(total_spare, "float32"), 1.0)
    share = ops.cast(ops.floor(ops.cast(need, "float32") * ratio * (1.0 - 1e-6)), "int32")
    share = ops.clip(share, 0, spare)
    room = spare - share
    left = need - ops.sum(share)
    before = ops.cumsum(room) - room
    extra = ops.clip(left - before, 0, room)
    return keep + share + extra


def update_counts(mask, allowed, target, fraction=None):
    """`(prune, regular, grow)` of one kernel's update with channels: the
    weights over its `target` are pruned; with a `fraction` (a method that
    swaps weights, on a kernel trained sparse) the regular drop-and-grow
    swaps that fraction of the weights it keeps, within the free live room;
    the weights under `target` are grown."""
    active = ops.cast(ops.sum(mask), "int32")
    capacity = ops.cast(ops.sum(allowed), "int32")
    prune = ops.maximum(active - target, 0)
    regular = ops.zeros((), "int32")
    if fraction is not None:
        # A fraction of the trained weights that stay, not of `target`: a
        # kernel that just lost most of its weights with its channels
        # (and grows back to `target` from zero) would otherwise swap out
        # every trained weight it has left.
        kept = ops.minimum(active, target)
        regular = ops.cast(ops.ceil(fraction * ops.cast(kept, "float32")), "int32")
        regular = ops.clip(regular, 0, ops.maximum(capacity - target, 0))
    return prune, regular, regular + ops.maximum(target - active, 0)


def _segments(index, total):
    """`index` with its -1 entries sent to the spare segment `total`."""
    return np.where(index < 0, total, index).astype("int32")
