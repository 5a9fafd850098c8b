"""Every setting of a sparse-training run, checked once, in one record.

The callbacks take their settings as arguments (documented on
`SparseTraining`), check each once through `Settings.checked` and keep the
record; the optimizer gets what it needs from it in one call
(`optimizer_arguments`), which is also where the one unit conversion
happens: `channel_begin` is a fraction of the run here, as `begin` and
`end` are, and a fraction of the mask-update schedule in the optimizer.
"""

import dataclasses
import difflib
import inspect
import math

from keras_dstee import arguments
from keras_dstee.training import blocks
from keras_dstee.training import channel_sparsity as channel_rules
from keras_dstee.training import methods
from keras_dstee.training import schedule
from keras_dstee.training.distributions import DISTRIBUTIONS
from keras_dstee.training.distributions import layer_densities
from keras_dstee.training.kernels import INITIAL_MASKS
from keras_dstee.training.kernels import resolve_rescale


@dataclasses.dataclass(frozen=True)
class Settings:
    """A run's settings, checked (see `SparseTraining` for each)."""

    method: object
    sparsity: object
    distribution: object
    update_freq: object
    drop_fraction: object
    begin: object
    end: object
    end_step: object
    rescale: object
    seed: object
    exclude: object
    include_embeddings: object
    dense_first: object
    dense_last: object
    erk_power_scale: object
    reset_regrown: object
    block_size: object
    initial_mask: object
    channel_sparsity: object
    min_channels: object
    channel_begin: object
    channel_end: object
    shrink: object

    @classmethod
    def checked(
        cls,
        owner,
        method,
        *,
        sparsity,
        distribution,
        update_freq,
        drop_fraction,
        begin,
        end,
        end_step,
        rescale,
        seed,
        exclude,
        include_embeddings,
        dense_first,
        dense_last,
        erk_power_scale,
        reset_regrown,
        block_size,
        initial_mask,
        channel_sparsity,
        min_channels,
        channel_begin,
        channel_end,
        shrink,
        **method_settings,
    ):
        """Checks every setting (a `ValueError` naming the argument, with
        `owner`, the callback's name, in the message) and returns the record.
        The defaults are the callback's (`SparseTraining`): every setting is
        given here."""
        _check_method_settings(owner, method, method_settings)
        method = methods.get(method, **method_settings)
        sparsity = arguments.number("sparsity", sparsity, 0, 1, high_open=True)
        if isinstance(distribution, dict):
            distribution = arguments.sparsity_map(distribution)
        elif not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Unknown `distribution={distribution!r}`. Expected one of "
                f"{DISTRIBUTIONS}, or a dict of layer name/regex to sparsity."
            )
        distribution = distribution
        update_freq = arguments.integer(
            "update_freq", update_freq, 1, " (optimizer steps between mask updates)"
        )
        drop_fraction = arguments.number("drop_fraction", drop_fraction, 0, 1)
        end = arguments.number("end", end, 0, 1, low_open=True)
        begin = arguments.number("begin", begin, 0, end, high_open=True)
        end_step = arguments.optional_integer(
            "end_step", end_step, 1, " (optimizer steps) or None"
        )
        initial_mask = arguments.choice("initial_mask", initial_mask, INITIAL_MASKS)
        rescale = resolve_rescale(rescale, initial_mask)
        seed = arguments.seed(seed)
        exclude = arguments.layer_patterns("exclude", exclude)
        include_embeddings = arguments.boolean("include_embeddings", include_embeddings)
        dense_first = arguments.boolean("dense_first", dense_first)
        dense_last = arguments.boolean("dense_last", dense_last)
        erk_power_scale = arguments.number("erk_power_scale", erk_power_scale, 0, math.inf, high_open=True)
        reset_regrown = arguments.boolean("reset_regrown", reset_regrown)
        block_size = blocks.check_block_size(block_size)
        channel_sparsity, min_channels = channel_rules.check_settings(channel_sparsity, min_channels)
        if channel_sparsity > 0 and block_size is not None:
            raise ValueError("`channel_sparsity` and `block_size` can't be combined yet: use one of them.")
        if channel_begin is not None:
            channel_begin = channel_rules.check_begin(channel_begin, channel_sparsity, begin, end)
        if channel_end is not None:
            low = begin if channel_begin is None else channel_begin
            channel_end = channel_rules.check_end(channel_end, channel_sparsity, low, end)
        shrink = arguments.boolean("shrink", shrink)
        if shrink and channel_sparsity == 0:
            raise ValueError(
                f"{owner}(shrink=True) rebuilds the model without its removed channels, and "
                "channel_sparsity=0 removes none: set `channel_sparsity` (e.g. 0.5), or leave "
                "`shrink` out."
            )
        start = method.initial_sparsity
        if start is not None and not isinstance(distribution, dict) and start > sparsity:
            raise ValueError(
                f"`initial_sparsity={start}` is above `sparsity={sparsity}`: "
                f"{owner} only raises the sparsity, from `initial_sparsity` "
                "at `begin` to `sparsity` at `end`. Give an `initial_sparsity` at or "
                "below `sparsity`."
            )
        return cls(
            method=method,
            sparsity=sparsity,
            distribution=distribution,
            update_freq=update_freq,
            drop_fraction=drop_fraction,
            begin=begin,
            end=end,
            end_step=end_step,
            rescale=rescale,
            seed=seed,
            exclude=exclude,
            include_embeddings=include_embeddings,
            dense_first=dense_first,
            dense_last=dense_last,
            erk_power_scale=erk_power_scale,
            reset_regrown=reset_regrown,
            block_size=block_size,
            initial_mask=initial_mask,
            channel_sparsity=channel_sparsity,
            min_channels=min_channels,
            channel_begin=channel_begin,
            channel_end=channel_end,
            shrink=shrink,
        )

    def densities(self, model, sparsity=None):
        """The planned densities, at `sparsity` (default: the target)."""
        distribution = self.distribution
        if sparsity is not None and isinstance(distribution, dict):
            # A pruning method's start: each mapped layer at `sparsity`, or
            # at its own target if that is lower.
            distribution = {k: min(v, sparsity) for k, v in distribution.items()}
        return layer_densities(
            model,
            self.sparsity if sparsity is None else sparsity,
            distribution,
            exclude=self.exclude,
            include_embeddings=self.include_embeddings,
            dense_first=self.dense_first,
            dense_last=self.dense_last,
            erk_power_scale=self.erk_power_scale,
        )

    def channel_begin_in_schedule(self):
        """`channel_begin` (a fraction of the run, like `begin` and `end`) as
        the optimizer takes it: a fraction of the mask-update schedule."""
        if self.channel_begin is None:
            return 0.0
        end = 1.0 if self.end_step is not None else self.end
        return schedule.fraction_of_schedule(self.channel_begin, self.begin, end)

    def channel_end_in_schedule(self):
        """`channel_end` (a fraction of the run) as a fraction of the
        mask-update schedule, as the optimizer takes it."""
        if self.channel_end is None:
            return 1.0
        end = 1.0 if self.end_step is not None else self.end
        return schedule.fraction_of_schedule(self.channel_end, self.begin, end)

    def optimizer_arguments(self):
        """What `SparseOptimizer` takes from these settings (besides the
        densities, the schedule's end and the channel groups)."""
        return dict(
            method=self.method,
            update_freq=self.update_freq,
            drop_fraction=self.drop_fraction,
            reset_regrown=self.reset_regrown,
            rescale=self.rescale,
            seed=self.seed,
            block_size=self.block_size,
            initial_mask=self.initial_mask,
            channel_sparsity=self.channel_sparsity,
            # Without channels to remove, `min_channels` does nothing (and
            # was warned about when the settings were checked).
            min_channels=self.min_channels if self.channel_sparsity else channel_rules.DEFAULT_MIN_CHANNELS,
            channel_begin=self.channel_begin_in_schedule(),
            channel_end=self.channel_end_in_schedule(),
        )


FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))


def _check_method_settings(owner, method, settings):
    """A keyword that is neither a callback argument nor one of the
    method's settings: the error lists both, with the closest name."""
    if isinstance(method, str) and method in methods.names():
        method = methods.registered(method)
    if not (isinstance(method, type) and issubclass(method, methods.Method)):
        return  # methods.get says what is wrong
    unknown = sorted(set(settings) - set(method.setting_names))
    if not unknown:
        return
    own = [
        name
        for name in inspect.signature(Settings.checked).parameters
        if name not in ("cls", "owner", "method", "method_settings")
    ]
    valid = own + list(method.setting_names)
    close = [m for name in unknown for m in difflib.get_close_matches(name, valid, n=1)]
    hint = f" Did you mean `{'`, `'.join(close)}`?" if close else ""
    settings_text = (
        f"; the settings of method {method.name!r}: {', '.join(method.setting_names)}"
        if method.setting_names
        else ""
    )
    raise ValueError(
        f"{owner} does not take `{'`, `'.join(unknown)}`.{hint} "
        f"Its arguments: {', '.join(own)}{settings_text}."
    )
