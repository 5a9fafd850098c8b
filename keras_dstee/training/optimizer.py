"""`SparseOptimizer`: owns the masks and updates them inside the step."""

import inspect
import math
import warnings

import keras
import numpy as np
from keras import ops
from keras.src.utils import tracking

from keras_dstee import arguments
from keras_dstee import host
from keras_dstee.training import blocks
from keras_dstee.training import budget
from keras_dstee.training import channel_sparsity as channel_rules
from keras_dstee.training import control
from keras_dstee.training import mask_update
from keras_dstee.training import methods
from keras_dstee.training import statistics
from keras_dstee.training.kernels import INITIAL_MASKS
from keras_dstee.training.kernels import active_positions
from keras_dstee.training.kernels import add_kernel
from keras_dstee.training.kernels import resolve_rescale


def find_sparse_optimizer(optimizer):
    """The `SparseOptimizer` in `optimizer`: itself, or inside the
    `LossScaleOptimizer` that mixed precision puts around it; else None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, SparseOptimizer) else None


def _unwrap_loss_scale(optimizer):
    """The optimizer inside a `LossScaleOptimizer` given as our inner one.

    The loss scaling must happen outside: inside, its skipped steps would
    still count as ours, and on JAX its stateful `apply` cannot run in our
    step. Under a mixed_float16 policy `compile` puts a default
    `LossScaleOptimizer` around ours, so the user's is dropped when that
    loses nothing; otherwise the user is told which order to write.
    """
    defaults = inspect.signature(keras.optimizers.LossScaleOptimizer).parameters
    same = all(
        getattr(optimizer, name) == defaults[name].default
        for name in ("initial_scale", "dynamic_growth_steps")
    )
    if keras.config.dtype_policy().name == "mixed_float16" and same:
        return optimizer.inner_optimizer
    raise ValueError(
        "Put the LossScaleOptimizer outside: "
        "`LossScaleOptimizer(SparseOptimizer(inner, ...))`, or compile "
        "`SparseOptimizer(inner, ...)` under a mixed_float16 policy and "
        "Keras adds it."
    )


@keras.saving.register_keras_serializable(package="keras_dstee")
class SparseOptimizer(keras.optimizers.Optimizer):
    """Trains chosen kernels sparse, with a planned number of active weights.

    Wraps the user's optimizer the way `LossScaleOptimizer` does. Per sparse
    kernel it owns a 0/1 mask and an activity counter (how many steps each
    position has been active); both are optimizer variables, so they live in
    the compiled step on every backend and are saved with the model. Each step:

    1. the gradients of inactive weights are zeroed, so the inner optimizer's
       state stays 0 there;
    2. the inner optimizer updates, then a `MaskConstraint` re-zeroes every
       inactive weight;
    3. every `update_freq` steps until `end_step`, the masks are updated under
       `ops.cond`: a pruning method first drops the active weights its density
       schedule no longer allows, then the `f(t)` fraction of active weights
       with the lowest drop score (magnitude) is dropped and as many positions
       grown by the `method`'s grow score. Grown weights and their optimizer
       slots start at 0.

    On its first step the optimizer masks the kernels and, with `rescale`,
    multiplies the kept weights by `1 / sqrt(density)` so their variance suits
    the sparse fan-in. Most users never build this class: the `DSTEE`, `RigL`,
    `SET`, `Static`, `GMP`, `GraNet` and `SparseTraining` callbacks do it from
    `fit`. To use it directly:

    ```python
    densities = keras_dstee.layer_densities(model, sparsity=0.9)
    model.compile(
        optimizer=keras_dstee.SparseOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9), densities, end_step=7500
        ),
        loss="sparse_categorical_crossentropy",
    )
    ```

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` doing the updates.
        densities: dict from variable path (`variable.path`) to the fraction of
            its weights kept, in (0, 1], as `keras_dstee.layer_densities`
            returns; or a list with one density (or None) per trainable
            variable. Variables not listed are not trained sparse; listed
            ones at density 1 stay dense but count in the logged `sparsity`.
        method: how masks change: a `keras_dstee.methods.Method`, or a
            registered name (`"dstee"`, `"rigl"`, `"set"`, `"static"`,
            `"gmp"`, `"granet"`, or one given to `keras_dstee.methods.register`).
            With a name, the method's settings (e.g. DST-EE's `exploration`)
            may be given here as keywords.
        update_freq: optimizer steps between two mask updates.
        drop_fraction: fraction of active weights replaced at the first
            update; decays to 0 at `end_step` (cosine).
        end_step: the optimizer step after which masks stay fixed. Required
            unless a callback sets it or the method never updates masks.
        initial_densities: for pruning methods (`GMP`, `GraNet`), the
            densities at the start of the schedule, in the form of
            `densities`; by default every kernel starts at
            `1 - method.initial_sparsity` (never below its final density).
        reset_regrown: a weight dropped and regrown in the same update
            restarts at 0 with zeroed slots, like every grown weight; False
            keeps its value and slots.
        rescale: whether kept weights are multiplied by `1 / sqrt(density)`
            on the first step; None (default): with a `"random"` initial
            mask only (a pretrained model keeps its weights as they are).
        seed: int seeding the initial masks (and random growth).
        block_size: None (unstructured), or `(input, output)`: masks
            change in whole blocks over each kernel's last two axes, scored
            by the sums of their positions' scores, with budgets in whole
            blocks. `(4, 1)` is the pattern TFLite's sparse `Dense`
            (FullyConnected) kernel runs faster than dense. A kernel whose
            last two axes do not divide by it stays unstructured (a warning
            names it; `keras_dstee.summary` shows each kernel's pattern).
        initial_mask: `"random"` (default: training from scratch), or
            `"magnitude"`: each kernel starts with its largest-magnitude
            weights (block L1 with `block_size`) active, so a pretrained
            model keeps its most important weights; the mask is chosen from
            the weights when it is installed (`install()` or the first step).
        channel_sparsity: fraction of the removable channels removed by
            `end_step`, in [0, 1): at mask updates (and at `end_step`) whole
            channels go, lowest unmasked mean magnitude first, along a cubic
            schedule; their weights are masked to 0 and the budget regrows
            inside live channels. 0 (default) removes none.
        min_channels: per channel group, the fraction of what the schedule
            would leave it that it keeps at least, in [0, 1].
        channel_begin: fraction of the mask-update schedule (from its start
            to `end_step`) that passes before channels go, in [0, 1); their
            cubic schedule then runs over the rest. 0 (default): from the
            first mask update.
        channel_end: fraction of the mask-update schedule by which the
            channels reach `channel_sparsity`, in (channel_begin, 1]: a
            front-loaded removal, so that a run that shrinks
            (`keras_dstee.shrink`) spends most of its steps small; the
            weight masks still update until `end_step`. 1 (default): at
            `end_step`.
        channel_groups: with `channel_sparsity`, the model's
            `keras_dstee.channel_groups(model)` (the callbacks pass it).
        shrunk: set by `keras_dstee.shrink` (saved in the config): per
            kernel, `[position, active, initial_active, positions before
            shrinking, of those cut the ever-active]`. Leave it out.
        name: the optimizer's name.
    """

    def __init__(
        self,
        inner_optimizer,
        densities,
        method="dstee",
        update_freq=100,
        drop_fraction=0.3,
        end_step=None,
        initial_densities=None,
        reset_regrown=True,
        rescale=None,
        seed=None,
        block_size=None,
        initial_mask="random",
        channel_sparsity=0.0,
        min_channels=channel_rules.DEFAULT_MIN_CHANNELS,
        channel_begin=0.0,
        channel_end=1.0,
        channel_groups=None,
        shrunk=None,
        name=None,
        **kwargs,
    ):
        # A method's settings beside a method name: how 0.1 wrote DST-EE's
        # `exploration`, `epsilon` and `normalize_gradients`.
        method_settings = {}
        if isinstance(method, str) and method in methods.names():
            known = methods.registered(method).setting_names
            method_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
        if kwargs:
            raise ValueError(
                f"SparseOptimizer does not take `{'`, `'.join(kwargs)}`. Set "
                "learning rate, weight decay, clipping and the like on the "
                "inner optimizer."
            )
        super().__init__(learning_rate=0.0, name=name)
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                "`inner_optimizer` must be a `keras.optimizers.Optimizer`. "
                f"Received: {inner_optimizer!r}"
            )
        if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
            inner_optimizer = _unwrap_loss_scale(inner_optimizer)
        self.inner_optimizer = inner_optimizer
        self.method = methods.get(method, **method_settings)
        # Methods that ask for it get the schedule's progress.
        grow_parameters = inspect.signature(self.method.grow_scores).parameters
        self._grow_takes_progress = "progress" in grow_parameters
        self._grow_takes_dense_size = "dense_size" in grow_parameters
        self.densities = budget.checked_densities("densities", densities)
        self.initial_densities = None
        if initial_densities is not None:
            if self.method.initial_sparsity is None:
                raise ValueError(
                    "`initial_densities` is for pruning methods (GMP, GraNet), whose "
                    f"density changes during training; {self.method!r} keeps its budget."
                )
            self.initial_densities = budget.checked_densities("initial_densities", initial_densities)
        self.update_freq = arguments.integer(
            "update_freq", update_freq, 1, " (optimizer steps between mask updates)"
        )
        self.drop_fraction = arguments.number("drop_fraction", drop_fraction, 0, 1)
        self.end_step = arguments.optional_integer("end_step", end_step, 1)
        self.reset_regrown = arguments.boolean("reset_regrown", reset_regrown)
        self.initial_mask = arguments.choice("initial_mask", initial_mask, INITIAL_MASKS)
        self.rescale = resolve_rescale(rescale, self.initial_mask)
        seed = arguments.seed(seed)
        if seed is None:
            # Drawn once; every process of a multi-process run uses process 0's.
            seed = host.same_in_every_process(int(np.random.randint(2**31 - 1)))
        self.seed = int(seed)
        self.block_size = blocks.check_block_size(block_size)
        self.channel_sparsity, self.min_channels = channel_rules.check_settings(channel_sparsity, min_channels)
        self.channel_begin = 0.0
        if channel_begin != 0:
            self.channel_begin = channel_rules.check_begin(channel_begin, self.channel_sparsity, 0, 1)
        self.channel_end = 1.0
        if channel_end != 1:
            self.channel_end = channel_rules.check_end(channel_end, self.channel_sparsity, self.channel_begin, 1)
        self.channel_groups = channel_groups
        self.shrunk = None if shrunk is None else [[int(n) for n in record] for record in shrunk]
        if self.channel_sparsity > 0:
            if self.block_size is not None:
                raise ValueError(
                    "`channel_sparsity` and `block_size` can't be combined yet: "
                    "use one of them."
                )
            if channel_groups is None:
                raise ValueError(
                    "`channel_sparsity` needs `channel_groups=keras_dstee.channel_groups(model)` "
                    "(the callbacks pass it)."
                )
        self.channels = None

    @property
    def changes_masks(self):
        """Whether mask updates run: the method's, or channel removal."""
        return self.method.updates_masks or self.channel_sparsity > 0

    @property
    def has_grow_rule(self):
        """Whether the method grows weights by its own scores (Static,
        whose masks never change, and pure pruning don't)."""
        return self.method.updates_masks and self.method.grows

    # --- state ---------------------------------------------------------------

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        # Without the decorator the kernel records below would make the model's
        # kernels and the inner slots count as this optimizer's variables.
        if self.built:
            return
        if not self.inner_optimizer.built:
            # Slots must exist now: created inside a trace they can't be found.
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        # The user's `densities` stay as given; the step uses them by position.
        self.densities_by_position = budget.by_position("densities", self.densities, var_list)
        self.initial_densities_by_position = budget.initial_by_position(
            self.initial_densities, self.method.initial_sparsity, self.densities_by_position, var_list
        )
        if self.end_step is None and self.changes_masks:
            raise ValueError(
                "`end_step` is required: the optimizer step after which masks "
                "stay fixed. The callbacks set it from `fit`; pass it when "
                "using `SparseOptimizer` directly."
            )
        end = 0 if self.end_step is None else int(self.end_step)
        self.step = self._scalar("step", 0)
        self.installed = self._scalar("installed", 0)
        self.start_step = self._scalar("start_step", 0)
        self.end_step_variable = self._scalar("end_step", end)
        self.last_update = self._scalar("last_update", 0)
        # Mask updates skipped because the gradient was not finite.
        self.skipped_updates = self._scalar("skipped_updates", 0)
        # Until `install()` runs eagerly, the step itself checks `installed`.
        self._install_pending = True
        self._host_clock = None
        self._host_ticked = False
        self.kernels = []
        # The kernels `densities` covers, the dense ones too, with their
        # final number of active positions: what the logged `sparsity` is
        # measured over, as `layer_densities` planned it.
        self.budget = []
        for index, variable in enumerate(var_list):
            density = self.densities_by_position[index]
            if density is None:
                continue
            shape = tuple(variable.shape)
            block = self.block_size if blocks.fits(shape, self.block_size) else None
            active = active_positions(shape, density, block)
            initial = active_positions(shape, self.initial_densities_by_position[index], block)
            initial = max(active, initial)
            self.budget.append((variable, active))
            # Removing channels masks dense kernels too.
            if active < math.prod(shape) or self.channel_sparsity > 0:
                self.kernels.append(add_kernel(self, index, variable, initial, active, block))
        if self.shrunk is not None:
            self._restore_shrunk_budgets()
        if self.channel_sparsity > 0:
            self._build_channels(var_list)
        if all(k.active == k.original_size for k in self.kernels):
            warnings.warn(
                "SparseOptimizer trains no kernel sparse: every variable in "
                "`densities` has density 1 (or none is listed), so the model "
                "trains dense. `keras_dstee.layer_densities(model, sparsity)` "
                "gives densities below 1.",
                stacklevel=2,
            )
        clamped = []
        if self.initial_densities is not None:
            clamped = budget.clamped(var_list, self.initial_densities_by_position, self.densities_by_position)
        if clamped:
            warnings.warn(
                f"`initial_densities` below the final density for {clamped}: a pruning "
                "method only removes weights, so these kernels start at their final density.",
                stacklevel=2,
            )
        unstructured = [k.variable.path for k in self.kernels if self.block_size and k.block is None]
        if unstructured:
            warnings.warn(
                f"block_size={self.block_size} does not divide the last two axes of "
                f"{unstructured}: they are trained unstructured.",
                stacklevel=2,
            )

    def _restore_shrunk_budgets(self):
        """A shrunk model's kernels keep the budgets (and the sizes the
        logged sparsity is measured over) of the model before shrinking."""
        records = {record[0]: record[1:] for record in self.shrunk}
        budget = dict((id(v), n) for v, n in self.budget)
        for k in self.kernels:
            if k.index in records:
                k.active, k.initial_active, k.dense_size, k.cut_ever_active = records[k.index]
                budget[id(k.variable)] = k.active
        self.budget = [(v, budget[id(v)]) for v, _ in self.budget]

    def _build_channels(self, var_list):
        """The channel plan, its `alive` flags, and the constraints that keep
        removed channels' other weights (biases, scales, unmasked kernels) 0."""
        groups = self.channel_groups
        if isinstance(groups, dict):
            plan = channel_rules.ChannelPlan.from_config(groups)
        else:
            channel_rules.removable_or_refuse(groups)
            plan = channel_rules.ChannelPlan.from_groups(groups, var_list)
            channel_rules.check_budget(plan, var_list, self.budget, self.channel_sparsity)
        self.channel_plan = plan
        alive = self.add_variable(
            shape=(plan.total,), dtype="float32", initializer="ones", name="channels_alive"
        )
        shapes = [tuple(v.shape) for v in var_list]
        self.channels = channel_rules.ChannelState(
            plan, self.channel_sparsity, self.min_channels, alive, shapes, self.channel_begin, self.channel_end
        )
        masked_positions = {k.index for k in self.kernels}
        # (position, variable) pairs, not a dict: TensorFlow tracks the
        # optimizer's attributes and cannot save a dict keyed by integers.
        self.channel_variables = [(p, var_list[p]) for p in self.channels.positions]
        for position, variable in self.channel_variables:
            if position not in masked_positions:
                variable.constraint = channel_rules.ChannelConstraint(self.channels, position, variable.constraint)

    def _scalar(self, name, value):
        return self.add_variable(
            shape=(),
            dtype="int",
            initializer=keras.initializers.Constant(value),
            aggregation=control.counter_aggregation(),
            name=name,
        )

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def set_schedule(self, start_step, end_step):
        """Mask updates run from optimizer step `start_step` until before
        `end_step` (a pruning method's last one at `end_step`)."""
        self.start_step.assign(start_step)
        self.end_step_variable.assign(end_step)
        self.end_step = int(end_step)
        self._host_clock = None

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._host_clock = None

    def _tick_host_clock(self):
        """Counts the step on the host too, in eager torch. The clock is read
        from the device once, when a fit starts or after a load; a step that
        did not tick it (traced by torch.compile) reads the device."""
        ticked = control.eager_torch()
        if ticked:
            if self._host_clock is None:
                self._host_clock = [
                    int(ops.convert_to_numpy(v)) for v in (self.step, self.start_step, self.end_step_variable)
                ]
            else:
                self._host_clock[0] += 1
        else:
            self._host_clock = None
        self._host_ticked = ticked

    # --- the step ------------------------------------------------------------

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(list(trainable_variables))
            self.built = True
        if trainable_variables is not None:
            self._check_variables_are_known(trainable_variables)
            variables = list(trainable_variables)
        else:
            variables = self._trainable_variables
        grads = list(grads)
        positions = {self._var_key(v): i for i, v in enumerate(variables)}
        kernels = [
            (k, positions[self._var_key(k.variable)])
            for k in self.kernels
            if self._var_key(k.variable) in positions
        ]
        self.step.assign_add(1)
        self._tick_host_clock()
        if self._install_pending:
            mask_update.install(self, [k for k, _ in kernels])
        dense_grads = {id(k): grads[i] for k, i in kernels}
        for k, i in kernels:
            if grads[i] is not None:
                # A product, cheaper than `where` in eager torch. A NaN it
                # lets into an inactive slot never reaches a weight (the
                # constraint uses `where`) and growing resets the slot.
                grads[i] = grads[i] * ops.convert_to_tensor(k.mask)
        self.inner_optimizer.apply(grads, variables)
        mask_update.update_masks(self, [(k, dense_grads[id(k)]) for k, _ in kernels])

    def install(self):
        """Masks (and rescales) the kernels now rather than on the first step,
        so the first forward pass already sees the sparse model. Runs once."""
        mask_update.install(self, self.kernels)
        self._install_pending = False

    # --- delegation to the inner optimizer -------------------------------------

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # --- metrics -------------------------------------------------------------

    def sparsity_stats(self):
        """Current `sparsity`, `zero_fraction`, `coverage`, `drop_fraction` and
        `skipped_updates`, as Python numbers (`statistics.sparsity_stats`)."""
        return statistics.sparsity_stats(self)

    # --- serialization ---------------------------------------------------------

    def get_config(self):
        # Saved by position once built: variable paths change when a model is
        # loaded. Plain types: TF wraps attributes in tracking containers.
        plain = lambda d: None if d is None else (dict(d) if hasattr(d, "items") else list(d))  # noqa: E731
        built = getattr(self, "densities_by_position", None) is not None
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            "densities": plain(self.densities_by_position if built else self.densities),
            "initial_densities": None
            if self.method.initial_sparsity is None
            else plain(self.initial_densities_by_position if built else self.initial_densities),
            "method": {"name": self.method.name, "config": self.method.get_config()},
            "update_freq": self.update_freq,
            "drop_fraction": self.drop_fraction,
            "end_step": self.end_step,
            "reset_regrown": self.reset_regrown,
            "rescale": self.rescale,
            "seed": self.seed,
            "block_size": None if self.block_size is None else list(self.block_size),
            "initial_mask": self.initial_mask,
            **self._channel_config(),
        }

    def _channel_config(self):
        """The channel settings, with the plan by variable position (saved
        only when channels are removed: older files stay as they were)."""
        if self.channel_sparsity == 0:
            return {}
        plan = getattr(self, "channel_plan", None)
        groups = plan.get_config() if plan is not None else self.channel_groups
        return {
            "channel_sparsity": self.channel_sparsity,
            "min_channels": self.min_channels,
            "channel_begin": self.channel_begin,
            "channel_groups": groups if isinstance(groups, dict) else None,
            # Written only when used: older files stay as they were.
            **({"channel_end": self.channel_end} if self.channel_end != 1 else {}),
            **({"shrunk": self.shrunk} if self.shrunk is not None else {}),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        method = config.get("method")
        if isinstance(method, dict):
            config["method"] = methods.registered(method["name"]).from_config(method["config"])
        return cls(inner, **config)


