"""Which channels of a group are alive, in one place.

Two questions, read on the host from the weights (or the optimizer's
masks):

- `live_channels`: does a channel take part in training, i.e. does it have
  an active weight in its fan-in and, when something reads it, in its
  fan-out? This is what the callbacks log (`live_channels`) and `summary`
  shows. The optimizer's in-step copy of the same rule, on tensors, is
  `training.channel_sparsity.ChannelState.next_alive`.
- `gone_channels`: does a channel change no output, i.e. are all its
  producing weights, bias and BatchNormalization scale and shift 0, or does
  nothing read it? That is what `slim` cuts out.
"""

import numpy as np

from keras_dstee.structure import channels

# Per-channel statistics: they do not decide whether a channel outputs 0.
STATISTICS = ("moving_mean", "moving_variance")


def live_channels(group, masks=None):
    """Per channel of `group`, whether it is alive (a bool array); `masks`:
    `{id(variable): mask}` where the optimizer has them, else the weights'
    nonzeros count."""
    masks = masks or {}

    def active(slices):
        found = np.zeros(group.size, bool)
        for s in slices:
            if len(s.variable.shape) > 1:
                found |= channels.nonzero_channels(s, masks.get(id(s.variable)))
        return found

    kernels_read = [s for s in group.consumers if len(s.variable.shape) > 1]
    fan_out = active(kernels_read) if kernels_read else np.ones(group.size, bool)
    return active(group.producers) & fan_out


def live_fraction(groups, masks=None):
    """Fraction of the removable channels alive (see `live_channels`); None
    for a model without removable channels."""
    total = live = 0
    for group in groups:
        if not group.removable:
            continue
        total += group.size
        live += int(np.sum(live_channels(group, masks)))
    return None if total == 0 else live / total


def gone_channels(group):
    """The channels of `group` that change no output: silent or unread."""
    if not group.removable:
        return []
    speaking = np.zeros(group.size, bool)
    for s in group.producers + [f for f in group.followers if f.variable.name not in STATISTICS]:
        speaking |= channels.nonzero_channels(s)
    read = np.zeros(group.size, bool)
    for s in group.consumers:
        read |= channels.nonzero_channels(s)
    unread = ~read if group.consumers else np.zeros(group.size, bool)
    return [int(c) for c in np.flatnonzero(~speaking | unread)]
