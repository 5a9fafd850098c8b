"""The callbacks users pass to `fit`: `SparseTraining` with any method, and
`DSTEE` and the baselines as shortcuts."""

import math
import sys
import warnings

import keras

from keras_dstee.structure import channels
from keras_dstee.structure import liveness
from keras_dstee.training import channel_sparsity as channel_rules
from keras_dstee.training import fit_shrinking
from keras_dstee.training import schedule
from keras_dstee.training import wrapping
from keras_dstee.training.kernels import active_positions
from keras_dstee.training.optimizer import find_sparse_optimizer
from keras_dstee.training.settings import FIELDS
from keras_dstee.training.settings import Settings


def _strategy_name(tf, strategy):
    """The name users write for a `tf.distribute` strategy."""
    public = [
        ("MultiWorkerMirroredStrategy", tf.distribute.MultiWorkerMirroredStrategy),
        ("MirroredStrategy", tf.distribute.MirroredStrategy),
        ("TPUStrategy", tf.distribute.TPUStrategy),
        ("experimental.CentralStorageStrategy", tf.distribute.experimental.CentralStorageStrategy),
        ("experimental.ParameterServerStrategy", tf.distribute.experimental.ParameterServerStrategy),
        ("OneDeviceStrategy", tf.distribute.OneDeviceStrategy),
    ]
    for name, cls in public:
        if isinstance(strategy, cls):
            return f"tf.distribute.{name}"
    return type(strategy).__name__


def _check_distribution(model):
    """Refuses the multi-replica setups the mask update does not handle,
    rather than training wrong: supported are JAX's `keras.distribution`
    (one or several processes) and TensorFlow's `MirroredStrategy` and
    `MultiWorkerMirroredStrategy`."""
    backend = keras.backend.backend()
    replicas, setup = 1, None
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = getattr(model, "distribute_strategy", None)
        replicas = getattr(strategy, "num_replicas_in_sync", 1)
        if type(strategy) is tf.distribute.MirroredStrategy or isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return
        setup = _strategy_name(tf, strategy)
    elif backend == "torch":
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            replicas = torch.distributed.get_world_size()
            setup = "torch.distributed"
    if replicas > 1:
        hint = (
            " On torch, train with a custom loop in which every process applies "
            "the same all-reduced gradients through `SparseOptimizer` (docs/scaling-out.md)."
            if setup == "torch.distributed"
            else ""
        )
        raise ValueError(
            f"Sparse training with {setup} over {replicas} replicas is not "
            "supported by the callbacks: the mask update must see the gradient "
            "summed over all replicas, which is implemented for TensorFlow's "
            "`tf.distribute.MirroredStrategy` and `MultiWorkerMirroredStrategy` "
            "and for JAX's `keras.distribution` (`DataParallel`, `ModelParallel`, "
            f"one or several processes). Use one of those, or train on one device.{hint}"
        )


class SparseTraining(keras.callbacks.Callback):
    """Trains the model sparse with any method: `SparseTraining("rigl")`,
    `SparseTraining(MyMethod(), sparsity=0.95)`. `DSTEE`, `RigL`, `SET`,
    `Static`, `GMP` and `GraNet` are this callback with their method.

    At the start of `fit` it wraps the model's optimizer in a
    `SparseOptimizer`, which masks the prunable kernels and updates the masks
    inside the compiled train step, and moves itself to the front of the
    callback list, so that every logger (`History`, `CSVLogger`,
    `TensorBoard`, `ModelCheckpoint`'s `monitor`) sees the metrics it adds at
    each epoch end: `sparsity`, `zero_fraction`, `coverage` and
    `drop_fraction`, and `live_channels` for a Functional or Sequential
    model with removable channels. A later `fit` on the same model continues from the
    existing masks, counters and step, with the settings the model already
    trains with (a callback asking for others gets a warning naming both).

    Args:
        method: a name from `keras_dstee.methods.names()` or a
            `keras_dstee.methods.Method` (instance or subclass).
        sparsity: fraction of the prunable weights that are zero, in [0, 1).
        distribution: how the sparsity is split across layers: `"erk"`
            (Erdos-Renyi-Kernel: small layers denser), `"er"`, `"uniform"`,
            or a dict of layer name or regex (whole-name match; first match
            wins) to that layer's sparsity; unmatched layers stay dense.
        update_freq: optimizer steps between two mask updates.
        drop_fraction: fraction of each kernel's active weights replaced at the
            first update; decays to 0 by `end` (cosine).
        begin: fraction of the run before mask updates start, in [0, end).
        end: fraction of the training steps of `fit` after which the masks
            stay fixed, in (0, 1].
        end_step: optimizer steps of `fit` after which the masks stay fixed,
            instead of `end`; for data whose length `fit` cannot know
            (generators, `tf.data` without cardinality).
        rescale: multiply the kept initial weights by `1 / sqrt(density)`, so
            the sparse network starts with the variance of the dense one.
            None (default): only with `initial_mask="random"`.
        seed: int seeding the initial masks; `None` picks one at random.
        exclude: a layer name, regular expression (matched against whole
            layer names) or layer class whose weights stay dense, or a list
            of them.
        include_embeddings: whether `Embedding` tables are pruned too.
        dense_first: keep the first prunable layer (the stem) dense.
        dense_last: keep the last prunable layer (the classifier) dense.
        erk_power_scale: with `"erk"`, the power of each kernel's raw ERK
            density (RigL's knob): 1.0 is ERK, 0.0 uniform.
        reset_regrown: a weight dropped and regrown in the same update
            restarts at 0 with zeroed optimizer slots (default; RigL's
            `reinit_when_same=True`, sparsimony); False keeps its value and
            slots (RigL's default, JaxPruner).
        block_size: None (unstructured), or `(input, output)`: weights are
            dropped and grown in whole blocks over each kernel's last two
            axes (a block scores the sum of its positions' scores). `(4, 1)`
            makes `Dense` layers run faster than dense in TFLite
            (`keras_dstee.export_tflite(..., optimize_for="latency")`);
            kernels that do not divide into blocks stay unstructured.
        initial_mask: `"random"` (default: training from scratch) or
            `"magnitude"`: each kernel starts from its largest weights, for
            sparsifying a pretrained model without throwing away its most
            important weights at the first step.
        channel_sparsity: fraction of the removable channels (see
            `keras_dstee.channel_groups`) removed by `end`, in [0, 1), for a
            Functional or Sequential model: at each mask update the channels
            with the lowest mean weight magnitude go, along a cubic schedule;
            their weights are masked to 0 and the weight budget regrows inside
            the live channels. `keras_dstee.slim(model)` then cuts them out
            (a smaller, faster dense network). 0 (default) removes none.
        min_channels: per layer, the fraction of the channels the schedule
            would leave it (`1 - channel_sparsity`) that it keeps at least.
            1.0 makes every layer lose the same fraction: the speed then
            follows the FLOPs (the global ranking mostly thins the cheap
            late layers). Set without `channel_sparsity`, it warns. With channels removed, call
            `keras_dstee.recalibrate_batch_norm(model, x)` after training:
            the BatchNormalization statistics lag behind (docs/channels.md).
        channel_begin: fraction of the run (like `begin` and `end`) before
            channels start to go, in [begin, end); their cubic schedule then
            runs from there to `end`, while the masks update from `begin`.
            None (default): from `begin`. Chase waits about a tenth of the
            run, until the magnitudes that rank the channels mean something.
        channel_end: fraction of the run by which the channels reach
            `channel_sparsity`, in (channel_begin, end]; the weight masks
            keep updating until `end`. Front-loading the removal (e.g.
            0.25) lets `shrink=True` train most of the run small. None
            (default): at `end`.
        shrink: rebuild the model without its removed channels during
            `fit` (at epoch ends, see docs/shrinking.md), so training gets
            cheaper as channels go; the model you hold is the smaller one
            afterwards. Needs `channel_sparsity` and a Functional or
            Sequential model. The run computes what the masked run does
            (same masks and weights up to float rounding).
        **method_settings: the method's own settings when `method` is a name
            or a class, e.g. `exploration=2.0` for `"dstee"`.
    """

    def __init__(
        self,
        method="dstee",
        sparsity=0.9,
        distribution="erk",
        update_freq=100,
        drop_fraction=0.3,
        begin=0.0,
        end=0.75,
        end_step=None,
        rescale=None,
        seed=None,
        exclude=None,
        include_embeddings=False,
        dense_first=False,
        dense_last=False,
        erk_power_scale=1.0,
        reset_regrown=True,
        block_size=None,
        initial_mask="random",
        channel_sparsity=0.0,
        min_channels=channel_rules.DEFAULT_MIN_CHANNELS,
        channel_begin=None,
        channel_end=None,
        shrink=False,
        **method_settings,
    ):
        super().__init__()
        # Checked once, kept as one record; read as `self.<setting>`.
        self.settings = Settings.checked(
            type(self).__name__,
            method,
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
            **method_settings,
        )
        self.optimizer = None
        # What `shrink=True` adds to `fit`; `rebuilds` reads its records.
        self._shrinking = fit_shrinking.FitShrinking(type(self).__name__)
        self._model_id = None
        self._schedule = None
        self._schedule_pending = False
        self._skipped_updates = 0
        self._groups = None

    def __getattr__(self, name):
        # The settings read as attributes (`callback.sparsity`), as before.
        settings = self.__dict__.get("settings")
        if settings is not None and name in FIELDS:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def rebuilds(self):
        """One dict per rebuild of a `shrink=True` run: `epoch`, `step`,
        `channels_before`/`_after` (removable channels), `channels_planned`
        (before any shrinking), `flops_before`/`_after` (multiply-adds per
        example), `step_s_before`/`_after` (seconds per step of the
        epochs around it) and `rebuild_s` (seconds the rebuild took, the
        recompile after it not included)."""
        return self._shrinking.rebuilds

    def on_train_begin(self, logs=None):
        # Keras calls this from its `CallbackList`, which is `self` there.
        self._move_to_front(sys._getframe(1).f_locals.get("self"))
        model = self.model
        if self._model_id not in (None, id(model)):
            raise ValueError(
                f"This {type(self).__name__} callback already trains another "
                "model. Create one callback per model."
            )
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None or not getattr(model, "compiled", False):
            raise ValueError(
                "The model must be compiled with an optimizer before "
                f"training with {type(self).__name__}: call `model.compile(...)`."
            )
        _check_distribution(model)
        self._groups = None
        if self.channel_sparsity > 0:
            self._groups = channel_rules.removable_or_refuse(channels.channel_groups(model))
        if self.shrink:
            self._shrinking.check(model, self._groups, sys._getframe(1).f_locals.get("self"))
        self._schedule = self._planned_schedule()
        existing = find_sparse_optimizer(optimizer)
        if existing is not None:
            # A second `fit`, or a model loaded with its sparse state.
            if not existing.built:
                existing.build(model.trainable_variables)
            self._warn_if_settings_differ(model, existing)
            if self._schedule is None and not _schedule_is_over(existing):
                raise ValueError(self._unknown_length_message())
            self.optimizer = existing
        else:
            if self._schedule is None:
                raise ValueError(self._unknown_length_message())
            self.optimizer = self._wrap(model, optimizer)
        self._model_id = id(model)
        self._schedule_pending = True
        self._skipped_updates = int(keras.ops.convert_to_numpy(self.optimizer.skipped_updates))

    def _move_to_front(self, callback_list):
        """Puts this callback first, so the loggers listed before it still
        get its metrics. A new list: Keras is iterating over the old one."""
        if isinstance(callback_list, keras.callbacks.CallbackList):
            others = [c for c in callback_list.callbacks if c is not self]
            if len(others) < len(callback_list.callbacks):
                callback_list.callbacks = [self] + others

    def _planned_schedule(self):
        """`(begin, end)`: optimizer steps of this `fit` until the mask
        updates start and until the masks stay fixed; None when `fit` can't
        tell how long it runs and `end_step` is not given."""
        return schedule.planned_steps(
            self.begin, self.end, self.end_step, self.params.get("steps"), self.params.get("epochs")
        )

    def _unknown_length_message(self):
        return (
            f"{type(self).__name__} cannot plan when its mask updates end: "
            "`fit` does not know how many steps this data gives (a generator "
            "or a `tf.data` pipeline without cardinality). Pass `end_step=` "
            f"(the optimizer steps after which masks stay fixed) to "
            f"{type(self).__name__}, or `steps_per_epoch` to `fit`."
        )

    def _warn_if_settings_differ(self, model, existing):
        """A model already training sparse keeps its masks and settings; the
        user hears about every setting of this callback that is not used."""
        wanted = dict(method=self.method)
        if self.method.updates_masks:
            wanted.update(
                update_freq=self.update_freq,
                drop_fraction=self.drop_fraction,
                reset_regrown=self.reset_regrown,
            )
        if self.seed is not None:
            wanted["seed"] = self.seed
        wanted["block_size"] = self.block_size
        wanted["channel_sparsity"] = self.channel_sparsity
        if self.channel_sparsity > 0:
            wanted["channel_begin"] = self.settings.channel_begin_in_schedule()
            wanted["channel_end"] = self.settings.channel_end_in_schedule()
        differ = [
            f"{k}={getattr(existing, k)!r} (asked: {v!r})"
            for k, v in wanted.items()
            if getattr(existing, k) != v
        ]
        densities = self.settings.densities(model)
        asked = {
            id(v): active_positions(tuple(v.shape), densities[v.path], self.block_size)
            for v in model.trainable_variables
            if v.path in densities
        }
        kept = {id(v): count for v, count in existing.budget}
        # A shrunk model's budgets were planned on its wider self.
        if asked != kept and existing.shrunk is None:
            differ.append(
                f"budget {_budget_text(existing.budget)} (asked: "
                f"{_budget_text([(v, asked[id(v)]) for v in model.trainable_variables if id(v) in asked])} "
                f"from sparsity={self.sparsity}, distribution={self.distribution!r})"
            )
        if differ:
            warnings.warn(
                f"The model already trains sparse, so {type(self).__name__} "
                f"continues with its masks and settings: {'; '.join(differ)}. "
                "To train with other settings, start from a new model.",
                stacklevel=3,
            )

    def _wrap(self, model, optimizer):
        """Wraps the user's optimizer (the one inside a `LossScaleOptimizer`
        under mixed precision) with this callback's settings."""
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        initial = None
        if self.method.initial_sparsity is not None:
            initial = self.settings.densities(model, self.method.initial_sparsity)
        return wrapping.wrap(
            model,
            optimizer,
            self.settings.densities(model),
            end_step=self._schedule[1],
            initial_densities=initial,
            channel_groups=self._groups,
            **self.settings.optimizer_arguments(),
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._shrinking.epoch_begins()
        if not self._schedule_pending:
            return
        self._schedule_pending = False
        steps = self.params.get("steps")
        if self._schedule is None or (epoch > 0 and not steps):
            # Data of unknown length: the model's own schedule goes on (it
            # has ended, or this resumes it at `initial_epoch`).
            return
        # The schedule spans this `fit` counted from epoch 0, so a run
        # resumed with `initial_epoch` keeps its original schedule.
        step = int(keras.ops.convert_to_numpy(self.optimizer.step))
        run_start = step - epoch * (steps or 0)
        begin, end = self._schedule
        self.optimizer.set_schedule(run_start + begin, run_start + end)
        if self.optimizer.changes_masks:
            total = steps * self.params["epochs"] if steps else None
            # With `channel_begin`, the updates that count are those removing channels.
            first = begin + round(self.settings.channel_begin_in_schedule() * (end - begin))
            self._warn_if_few_updates(step, run_start, run_start + first, run_start + end, total)

    def _warn_if_few_updates(self, step, run_start, start, end, total):
        """Warns when this `fit` (from optimizer step `run_start`, now at
        `step`; `total` steps or None when unknown) makes fewer than
        `FEW_UPDATES` mask updates between `start` and `end`: with none,
        training is static."""
        first = max(start, step + 1)
        last = end - 1 if total is None else min(end - 1, run_start + total)
        pruning = self.method.initial_sparsity is not None
        at_end = schedule.updates_at_end(pruning, self.channel_sparsity)
        run_end = None if total is None else run_start + total

        def planned(freq):
            return schedule.planned_updates(first, last, end, freq, at_end, run_end)

        count = planned(self.update_freq)
        if count >= schedule.FEW_UPDATES:
            return
        freq = max(1, (last - first + 1) // schedule.FEW_UPDATES)
        while freq > 1 and planned(freq) < schedule.FEW_UPDATES:
            freq -= 1
        if count == 0:
            effect = "the masks never change: this is static sparse training"
        elif pruning:
            effect = "the sparsity jumps in a few steps instead of rising gradually"
        elif at_end:
            effect = "the channels go in a few steps instead of gradually"
        else:
            effect = "too few for the masks to explore"
        what = "mask update(s)"
        if self.channel_begin is not None:
            what += f" removing channels (channel_begin={self.channel_begin})"
        # Advice that can be followed: a smaller update_freq only where one
        # reaches FEW_UPDATES (not when update_freq is already 1).
        longer = "train longer (more epochs or steps)"
        if self.end_step is not None or self.end < 1.0:
            longer += f" or end the mask updates later ({self._end_text()})"
        if freq < self.update_freq and planned(freq) >= schedule.FEW_UPDATES:
            advice = f"Use update_freq={freq}{' or lower' if freq > 1 else ''}, or {longer}"
        else:
            advice = f"No update_freq gives {schedule.FEW_UPDATES} in this run: {longer}"
        warnings.warn(
            f"{type(self).__name__} plans {count} {what} in this fit "
            f"({'an unknown number of' if total is None else total} optimizer steps; "
            f"update_freq={self.update_freq}; masks fixed after step {end - run_start}, "
            f"{self._end_text()}): {effect}. {advice} (docs/choosing-settings.md).",
            stacklevel=2,
        )

    def _end_text(self):
        return f"end_step={self.end_step}" if self.end_step is not None else f"end={self.end}"

    def on_epoch_end(self, epoch, logs=None):
        # `self.model` syncs the JAX state before the variables are read.
        if logs is None or find_sparse_optimizer(self.model.optimizer) is not self.optimizer:
            return
        stats = self.optimizer.sparsity_stats()
        skipped = stats.pop("skipped_updates")
        if skipped > self._skipped_updates:
            warnings.warn(
                f"{type(self).__name__}: {skipped - self._skipped_updates} mask "
                f"update(s) skipped in epoch {epoch + 1}: the gradient was not "
                "finite. Masks and budgets are unchanged.",
                stacklevel=2,
            )
        self._skipped_updates = skipped
        logs.update(stats)
        live = self._live_channels()
        if live is not None:
            logs["live_channels"] = live
        if self.shrink:
            optimizer = self._shrinking.epoch_ends(self.model, self.optimizer, epoch, self.params)
            if optimizer is not self.optimizer:
                self.optimizer = optimizer
                self._groups = None  # the model's channel groups are new

    def _live_channels(self):
        """Fraction of the removable channels alive; None for a model whose
        graph can't be read or that has no removable channel."""
        if self._groups is None:
            try:
                channels.check_graph_model(self.model, "live_channels")
            except ValueError:
                self._groups = []
            else:
                try:
                    self._groups = channels.channel_groups(self.model)
                except Exception as error:  # a metric must not end the user's fit
                    warnings.warn(
                        f"live_channels is not logged: reading the model's channels failed ({error!r}).",
                        stacklevel=2,
                    )
                    self._groups = []
        live = liveness.live_fraction(self._groups, {id(k.variable): k.mask for k in self.optimizer.kernels})
        plan = getattr(self.optimizer, "channel_plan", None) if self.optimizer.channels is not None else None
        if live is not None and plan is not None and plan.original_sizes is not None:
            live = live * plan.total / plan.original_total  # of the channels before shrinking
        return live


def _schedule_is_over(optimizer):
    step = int(keras.ops.convert_to_numpy(optimizer.step))
    return schedule.is_over(step, int(keras.ops.convert_to_numpy(optimizer.end_step_variable)))


def _budget_text(budget):
    size = sum(math.prod(v.shape) for v, _ in budget)
    active = sum(count for _, count in budget)
    return f"sparsity {1 - active / size:.4f} over {len(budget)} kernels"


class DSTEE(SparseTraining):
    """Dynamic sparse training with exploration and exploitation (DST-EE).

    Trains a model sparse from scratch at a fixed number of nonzero weights.
    Every `update_freq` steps it drops the active weights with the smallest
    magnitude (exploitation) and grows as many positions with the highest
    acquisition score `|g| / mean|g| + exploration * sqrt(ln t / (N + epsilon))`,
    where `g` is the dense gradient, `t` the optimizer step and `N` how many
    steps the position has been active: positions never tried get a bonus
    (exploration).

    ```python
    model.fit(x, y, epochs=10, callbacks=[keras_dstee.DSTEE(sparsity=0.9)])
    ```

    Args:
        sparsity: fraction of the prunable weights that are zero, in [0, 1).
        exploration: weight `c` of the exploration bonus. 0 is RigL.
        epsilon: keeps the bonus finite for positions never active.
        normalize_gradients: divide |g| by its per-layer mean, so that
            `exploration` is scale-free across layers and models; False is the
            paper's unnormalised score.
        count: what `N` counts: `"steps"` active (default) or mask-update
            `"periods"` active.
        bonus_decay: `"none"` (default), or `"cosine"`: the bonus fades like
            the drop fraction, to 0 at `end`.
        **kwargs: every other setting of `SparseTraining`: `distribution`,
            `update_freq`, `drop_fraction`, `begin`, `end`, `end_step`,
            `rescale`, `seed`, `exclude`, `include_embeddings`,
            `dense_first`, `dense_last`, `erk_power_scale`,
            `reset_regrown`, `block_size`, `initial_mask`,
            `channel_sparsity`, `min_channels`, `channel_begin`,
            `channel_end`, `shrink`.
    """

    def __init__(
        self,
        sparsity=0.9,
        exploration=1.0,
        epsilon=1.0,
        normalize_gradients=True,
        count="steps",
        bonus_decay="none",
        **kwargs,
    ):
        super().__init__(
            "dstee",
            sparsity,
            exploration=exploration,
            epsilon=epsilon,
            normalize_gradients=normalize_gradients,
            count=count,
            bonus_decay=bonus_decay,
            **kwargs,
        )


class RigL(SparseTraining):
    """RigL (Evci et al., 2020): grow the positions with the largest |gradient|.

    Same machinery and arguments as `DSTEE` without the exploration bonus;
    `RigL(seed=s)` gives the same masks and weights as
    `DSTEE(exploration=0, seed=s)`.

    Args:
        sparsity: fraction of the prunable weights that are zero, in [0, 1).
        **kwargs: every other setting of `SparseTraining` (`distribution`,
            `update_freq`, `end`, `channel_sparsity`, ...).
    """

    def __init__(self, sparsity=0.9, **kwargs):
        super().__init__("rigl", sparsity, **kwargs)


class SET(SparseTraining):
    """SET (Mocanu et al., 2018): grow positions chosen at random.

    Same machinery and arguments as `DSTEE` without the exploration bonus.

    Args:
        sparsity: fraction of the prunable weights that are zero, in [0, 1).
        **kwargs: every other setting of `SparseTraining` (`distribution`,
            `update_freq`, `end`, `channel_sparsity`, ...).
    """

    def __init__(self, sparsity=0.9, **kwargs):
        super().__init__("set", sparsity, **kwargs)


class GMP(SparseTraining):
    """Gradual magnitude pruning (Zhu & Gupta, 2017), the baseline Keras users
    know from tfmot's `prune_low_magnitude` with `PolynomialDecay(power=3)`.

    Starts at `initial_sparsity` (default 0: dense) and prunes the smallest
    weights every `update_freq` steps between `begin` and `end` (fractions
    of the run) so that the sparsity follows
    `s_t = sparsity + (initial_sparsity - sparsity) * (1 - progress)**3`,
    reaching `sparsity` exactly at `end`; nothing is regrown.

    ```python
    model.fit(x, y, epochs=30, callbacks=[keras_dstee.GMP(sparsity=0.9, end=0.6)])
    ```

    Args:
        sparsity: the final sparsity.
        initial_sparsity: the sparsity when pruning begins, in [0, 1).
        **kwargs: every other setting of `SparseTraining` (`begin`: the
            fraction of the run before pruning starts; `drop_fraction` is
            unused).
    """

    def __init__(self, sparsity=0.9, initial_sparsity=0.0, **kwargs):
        super().__init__("gmp", sparsity, initial_sparsity=initial_sparsity, **kwargs)


class GraNet(SparseTraining):
    """GraNet (Liu et al., 2021): gradual pruning with neuroregeneration.

    Starts from a random mask at `initial_sparsity` (default 0.5), prunes
    by magnitude along GMP's cubic schedule to `sparsity` at `end`, and at
    every update also drops and regrows (by |gradient|) the cosine-decaying
    `drop_fraction` of the active weights, so the connectivity keeps
    changing while the density follows the schedule.

    Args:
        sparsity: the final sparsity.
        initial_sparsity: the sparsity of the starting random mask.
        **kwargs: every other setting of `SparseTraining` (`distribution`,
            `update_freq`, `end`, `channel_sparsity`, ...).
    """

    def __init__(self, sparsity=0.9, initial_sparsity=0.5, **kwargs):
        super().__init__("granet", sparsity, initial_sparsity=initial_sparsity, **kwargs)


class Static(SparseTraining):
    """Static sparse training: a fixed random mask, never updated.

    With `channel_sparsity`, channels are still removed every `update_freq`
    steps until `end`, and the weights they free regrow at random positions
    of the live channels.

    Args:
        sparsity: as for `SparseTraining`.
        distribution: as for `SparseTraining`.
        rescale: as for `SparseTraining`.
        seed: as for `SparseTraining`.
        exclude: as for `SparseTraining`.
        include_embeddings: as for `SparseTraining`.
        dense_first: as for `SparseTraining`.
        dense_last: as for `SparseTraining`.
        block_size: as for `SparseTraining`.
        initial_mask: as for `SparseTraining`.
        channel_sparsity: as for `SparseTraining`.
        min_channels: as for `SparseTraining`.
        channel_begin: as for `SparseTraining`.
        channel_end: as for `SparseTraining`.
        shrink: as for `SparseTraining`.
        update_freq: as for `SparseTraining`.
        end: as for `SparseTraining`.
    """

    def __init__(
        self,
        sparsity=0.9,
        distribution="erk",
        rescale=None,
        seed=None,
        exclude=None,
        include_embeddings=False,
        dense_first=False,
        dense_last=False,
        block_size=None,
        initial_mask="random",
        channel_sparsity=0.0,
        min_channels=channel_rules.DEFAULT_MIN_CHANNELS,
        channel_begin=None,
        channel_end=None,
        shrink=False,
        update_freq=100,
        end=0.75,
    ):
        super().__init__(
            "static",
            sparsity=sparsity,
            distribution=distribution,
            rescale=rescale,
            seed=seed,
            exclude=exclude,
            include_embeddings=include_embeddings,
            dense_first=dense_first,
            dense_last=dense_last,
            block_size=block_size,
            initial_mask=initial_mask,
            channel_sparsity=channel_sparsity,
            min_channels=min_channels,
            channel_begin=channel_begin,
            channel_end=channel_end,
            shrink=shrink,
            update_freq=update_freq,
            end=end,
        )
