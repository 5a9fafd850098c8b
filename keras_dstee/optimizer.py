"""`SparseOptimizer`: owns the masks and runs drop-and-grow inside the step."""

import inspect
import math
import numbers

import keras
import numpy as np
from keras import ops
from keras.src.utils import tracking

from keras_dstee import arguments
from keras_dstee import methods
from keras_dstee import updates
from keras_dstee.constraints import MaskConstraint
from keras_dstee.constraints import masked
from keras_dstee.distributions import active_count


class _StepSeed(keras.random.SeedGenerator):
    """A seed computed inside the compiled step.

    `keras.random` takes an int or a `SeedGenerator`; drawing from a real
    generator would assign its state inside `ops.cond`, which JAX forbids.
    """

    def __init__(self, value):
        self._value = value

    def next(self, ordered=True):
        return self._value


def _tf_replicas():
    """How many replicas the current `tf.distribute` strategy runs."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _multi_replica_context():
    """TensorFlow's replica context while `tf.distribute` runs the step on
    several replicas; None otherwise (and on the other backends)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _is_traced(value):
    """Whether a JAX value is abstract (inside `jax.jit` or a `cond`)."""
    import jax

    return isinstance(value, jax.core.Tracer)


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
    """Trains chosen kernels sparse, with a fixed number of active weights.

    Wraps the user's optimizer the way `LossScaleOptimizer` does. Per sparse
    kernel it owns a 0/1 mask and an activity counter (how many steps each
    position has been active); both are optimizer variables, so they live in
    the compiled step on every backend and are saved with the model. Each step:

    1. the gradients of inactive weights are zeroed, so the inner optimizer's
       state stays 0 there;
    2. the inner optimizer updates, then a `MaskConstraint` re-zeroes every
       inactive weight;
    3. every `update_freq` steps until `end_step`, drop-and-grow runs under
       `ops.cond`: the `f(t)` fraction of active weights with the smallest
       magnitude is dropped and as many positions are grown by the `method`'s
       score. Grown weights and their optimizer slots start at 0.

    On its first step the optimizer masks the kernels and, with `rescale`,
    multiplies the kept weights by `1 / sqrt(density)` so their variance suits
    the sparse fan-in. Most users never build this class: the `DSTEE`, `RigL`,
    `SET` and `Static` callbacks do it from `fit`. To use it directly:

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
            returns; or a list with one density per trainable variable.
            Variables not listed, and those at density 1, stay dense.
        method: how masks change: a `keras_dstee.methods.Method`, or a
            registered name (`"dstee"`, `"rigl"`, `"set"`, `"static"`, or one
            given to `keras_dstee.methods.register`). With a name, the
            method's settings (DST-EE's `exploration`, `epsilon`,
            `normalize_gradients`) may be given here as keywords.
        update_freq: optimizer steps between two mask updates.
        drop_fraction: fraction of active weights replaced at the first
            update; decays to 0 at `end_step` (cosine).
        end_step: the optimizer step after which masks stay fixed. Required
            unless a callback sets it or the method never updates masks.
        rescale: whether kept weights are multiplied by `1 / sqrt(density)`
            on the first step.
        seed: int seeding the initial masks (and SET's random growth).
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
        rescale=True,
        seed=None,
        name=None,
        **kwargs,
    ):
        # A method's settings beside a method name: how 0.1 wrote DST-EE's
        # `exploration`, `epsilon` and `normalize_gradients`.
        method_settings = {}
        if not isinstance(method, methods.Method):
            known = methods.get(method).arguments if isinstance(method, str) and method in methods.names() else ()
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
        method = methods.get(method, **method_settings)
        self.inner_optimizer = inner_optimizer
        if isinstance(densities, dict):
            self.densities = {str(k): v for k, v in densities.items()}
            named = self.densities.items()
        elif isinstance(densities, (list, tuple)):
            self.densities = list(densities)
            named = enumerate(self.densities)
        else:
            raise ValueError(
                "`densities` must be a dict {variable.path: density} (as "
                "`keras_dstee.layer_densities` returns) or a list with one "
                f"density (or None) per trainable variable. Received: {densities!r}"
            )
        for key, density in named:
            valid = density is None or (
                isinstance(density, numbers.Real)
                and not isinstance(density, bool)
                and 0 < density <= 1
            )
            if not valid:
                raise ValueError(
                    f"The density of {key!r} in `densities` must be a number "
                    f"in (0, 1], or None. Received: {density!r}"
                )
        self.method = method
        self.update_freq = arguments.integer(
            "update_freq", update_freq, 1, " (optimizer steps between mask updates)"
        )
        self.drop_fraction = arguments.number("drop_fraction", drop_fraction, 0, 1)
        self.end_step = arguments.optional_integer("end_step", end_step, 1)
        self.rescale = arguments.boolean("rescale", rescale)
        seed = arguments.seed(seed)
        self.seed = int(np.random.randint(2**31 - 1) if seed is None else seed)

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
        self.densities = self._densities_by_position(var_list)
        if self.end_step is None and self.method.updates_masks:
            raise ValueError(
                "`end_step` is required: the optimizer step after which masks "
                "stay fixed. The `DSTEE`/`RigL`/`SET` callbacks set it from "
                "`fit`; pass it when using `SparseOptimizer` directly."
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
        self.kernels = []
        # The kernels `densities` covers, the dense ones too: what the logged
        # `sparsity` is measured over, as `layer_densities` planned it.
        self.budget = []
        for index, (variable, density) in enumerate(zip(var_list, self.densities)):
            if density is None:
                continue
            active = active_count(variable.shape, density)
            self.budget.append((variable, active))
            if active < math.prod(variable.shape):
                self.kernels.append(self._add_kernel(index, variable, active))

    def _densities_by_position(self, var_list):
        """One density per trainable variable, None for those outside the
        budget. Saved in this form: variable paths can change when a model is
        loaded, positions don't."""
        if isinstance(self.densities, list):
            if len(self.densities) != len(var_list):
                raise ValueError(
                    f"`densities` has {len(self.densities)} entries but the "
                    f"model trains {len(var_list)} variables."
                )
            # Files from 0.1 list 1.0 for every variable outside the budget;
            # biases and other 1-D weights are never part of it.
            return [
                None if d is None or (d == 1 and len(v.shape) < 2) else float(d)
                for v, d in zip(var_list, self.densities)
            ]
        paths = [v.path for v in var_list]
        unknown = sorted(set(self.densities) - set(paths))
        if unknown:
            raise ValueError(
                f"`densities` names variables the model does not train: "
                f"{unknown}. Trainable variables: {sorted(paths)}"
            )
        return [
            None if self.densities.get(p) is None else float(self.densities[p])
            for p in paths
        ]

    def _scalar(self, name, value):
        # Under `tf.distribute`, every replica holds the same counters: an
        # `assign_add` from the replicas takes the first one's value. Only
        # there: elsewhere on TF that aggregation costs ~3% of a small step.
        replicated = keras.backend.backend() == "tensorflow" and _tf_replicas() > 1
        return self.add_variable(
            shape=(),
            dtype="int",
            initializer=keras.initializers.Constant(value),
            aggregation="only_first_replica" if replicated else "none",
            name=name,
        )

    def _add_kernel(self, index, variable, active):
        """Creates the mask and counter of one kernel; returns its record."""
        shape = tuple(variable.shape)
        size = math.prod(shape)
        # Exactly `active` random positions; numpy makes it the same on every
        # backend. Passed as the initializer: an assign right after creation
        # is lost when the build runs inside a TF trace.
        rng = np.random.default_rng([self.seed, index])
        flat = np.zeros(size, "float32")
        flat[rng.permutation(size)[:active]] = 1.0
        initial = flat.reshape(shape)
        prefix = variable.path.replace("/", "_")
        # Under `keras.distribution`, mask and counter are laid out (sharded)
        # like their kernel.
        layout = getattr(variable, "_layout", None)
        mask = self.add_variable(
            shape=shape,
            dtype="float32",
            initializer=lambda shape, dtype: ops.convert_to_tensor(initial, dtype),
            layout=layout,
            name=f"{prefix}_mask",
        )
        counter = self.add_variable(
            shape=shape, dtype="float32", layout=layout, name=f"{prefix}_active_steps"
        )
        slots = [
            s
            for s in self.inner_optimizer.variables
            if s.name.startswith(prefix + "_") and tuple(s.shape) == shape
        ]
        variable.constraint = MaskConstraint(mask, variable.constraint)
        return {
            "index": index,
            "variable": variable,
            "mask": mask,
            "counter": counter,
            "slots": slots,
            "active": active,
            "density": active / size,
            "max_update": math.ceil(self.drop_fraction * active),
        }

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

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
            (k, positions[self._var_key(k["variable"])])
            for k in self.kernels
            if self._var_key(k["variable"]) in positions
        ]
        self.step.assign_add(1)
        if self._install_pending:
            self._install_once(kernels)
        dense_grads = {id(k): grads[i] for k, i in kernels}
        for k, i in kernels:
            if grads[i] is not None:
                # A product, cheaper than `where` in eager torch. A NaN it
                # lets into an inactive slot never reaches a weight (the
                # constraint uses `where`) and growing resets the slot.
                grads[i] = grads[i] * ops.convert_to_tensor(k["mask"])
        self.inner_optimizer.apply(grads, variables)
        self._update_masks([(k, dense_grads[id(k)]) for k, _ in kernels])

    def install(self):
        """Masks (and rescales) the kernels now rather than on the first step,
        so the first forward pass already sees the sparse model. Runs once."""
        self._install_once([(k, None) for k in self.kernels])
        self._install_pending = False

    def _install_once(self, kernels):
        """Masks (and rescales) the kernels on the first step after a build."""
        targets = [k["variable"] for k, _ in kernels]

        def install():
            values = []
            for k, _ in kernels:
                w = ops.convert_to_tensor(k["variable"])
                scale = 1.0 / math.sqrt(k["density"]) if self.rescale else 1.0
                values.append(masked(w, k["mask"]) * scale)
            return values

        self._cond_assign(lambda: ops.equal(self.installed, 0), install, targets)
        self.installed.assign(1)

    def _cond_assign(self, predicate, compute, targets, grads=()):
        """`targets[i].assign(compute(*grads)[i])` when `predicate()` holds.

        JAX forbids assignments inside `ops.cond`, so there both branches
        return values and the assignment happens outside (free in a stateless
        step). Elsewhere the assignment stays inside the branch, so a skipped
        step copies nothing; torch uses a plain `if`. Under `tf.distribute`
        the branch runs once for all replicas, on the summed gradients.
        """
        if not targets:
            return
        grads = list(grads)
        context = _multi_replica_context()
        if context is not None:

            def cross_replica(strategy, grads):
                self._cross_replica_cond_assign(
                    strategy, predicate, compute, targets, grads
                )

            context.merge_call(cross_replica, args=(grads,))
            return
        def compute_and_assign():
            for target, value in zip(targets, compute(*grads)):
                target.assign(value)

        backend = keras.backend.backend()
        condition = predicate()
        if backend == "torch" or (backend == "jax" and not _is_traced(condition)):
            # A plain `if`: `ops.cond` is one on torch anyway, and under
            # torch.compile each call names a new op and forces a recompile;
            # an eager JAX step (a custom loop outside `jax.jit`) would
            # compile both branches on every call.
            if bool(condition):
                compute_and_assign()
        elif backend == "jax":
            values = ops.cond(
                condition,
                lambda: compute(*grads),
                lambda: [ops.convert_to_tensor(t) for t in targets],
            )
            for target, value in zip(targets, values):
                target.assign(value)
        else:
            ops.cond(condition, compute_and_assign, lambda: None)

    @staticmethod
    def _cross_replica_cond_assign(strategy, predicate, compute, targets, grads):
        """`_cond_assign` in TensorFlow's cross-replica context: `grads` hold
        one value per replica. A collective cannot run inside a replica's
        `cond`, so the condition is taken here; only when it holds are the
        gradients summed across replicas (as the inner optimizer sums them)
        and `compute` run on every device, where reads and writes of the
        mirrored variables touch that device's copy."""
        import tensorflow as tf

        anchor = targets[0].value

        def update():
            reduced = []
            if grads:
                reduced = strategy.extended.batch_reduce_to(
                    tf.distribute.ReduceOp.SUM, [(g, anchor) for g in grads]
                )

            def on_device(_, *reduced):
                for target, value in zip(targets, compute(*reduced)):
                    target.assign(value)

            strategy.extended.update(anchor, on_device, args=tuple(reduced), group=False)

        ops.cond(predicate(), update, lambda: None)

    def _update_masks(self, kernels_and_grads):
        kernels_and_grads = [
            (k, g) for k, g in kernels_and_grads if k["max_update"] > 0 and g is not None
        ]
        if not self.method.updates_masks or not kernels_and_grads:
            return
        kernels = [k for k, _ in kernels_and_grads]
        targets = [self.last_update, self.skipped_updates]
        for k in kernels:
            targets += [k["mask"], k["counter"], k["variable"]] + k["slots"]

        def due():
            step = ops.convert_to_tensor(self.step)
            return ops.logical_and(
                ops.equal(step % self.update_freq, 0),
                ops.less(step, self.end_step_variable),
            )

        def compute(*grads):
            step = ops.convert_to_tensor(self.step)
            fraction = updates.drop_fraction_at(
                step, self.start_step, self.end_step_variable, self.drop_fraction
            )
            # A non-finite gradient would corrupt the scores: keep the masks.
            finite = ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in grads]))
            elapsed = ops.cast(step - self.last_update, "float32")
            skipped = self.skipped_updates + ops.cast(ops.logical_not(finite), self.skipped_updates.dtype)
            values = [step, skipped]
            for number, (k, grad) in enumerate(zip(kernels, grads)):
                old = [k["mask"], k["counter"], k["variable"]] + k["slots"]
                old = [ops.convert_to_tensor(v) for v in old]
                new = self._drop_and_grow(k, grad, step, fraction, elapsed, number)
                values += [ops.where(finite, n, o) for n, o in zip(new, old)]
            return values

        self._cond_assign(due, compute, targets, [g for _, g in kernels_and_grads])

    def _drop_and_grow(self, kernel, grad, step, fraction, elapsed, number):
        mask = ops.convert_to_tensor(kernel["mask"])
        counter = ops.convert_to_tensor(kernel["counter"]) + elapsed * mask
        weight = ops.convert_to_tensor(kernel["variable"])
        # A new seed at every update and for every kernel, the same on all
        # backends.
        seed = ops.stack(
            [ops.cast(step, "int32"), ops.cast(self.seed % 2**20 + number, "int32")]
        )
        seed = _StepSeed(ops.cast(seed, keras.src.backend.random_seed_dtype()))
        scores = self.method.grow_scores(weight, grad, counter, step, seed)
        keep = self.method.drop_scores(weight, grad)
        count = ops.cast(ops.ceil(fraction * kernel["active"]), "int32")
        count = ops.minimum(count, kernel["max_update"])
        new_mask, grown = updates.drop_and_grow(
            keep, mask, scores, count, kernel["max_update"]
        )
        keep = new_mask * (1.0 - grown)
        new_slots = [
            masked(ops.convert_to_tensor(s), keep) for s in kernel["slots"]
        ]
        return [new_mask, counter, masked(weight, keep)] + new_slots

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
        """Current `sparsity`, `zero_fraction`, `coverage` and `drop_fraction`,
        as Python floats.

        All are measured over the kernels of the budget (those `densities`
        lists, kernels kept dense by ERK included), the ones the callbacks'
        `sparsity=` refers to. `sparsity` is the fraction of positions outside
        the masks: what was asked for. `zero_fraction` counts exact zeros, so
        it is a little higher right after a mask update (grown weights start
        at 0). `coverage` is the fraction of positions ever active,
        `drop_fraction` the fraction the next mask update would replace, and
        `skipped_updates` counts mask updates skipped for a non-finite
        gradient. Reads variable values: on JAX, call it through the model (a
        callback's `self.model`) so the values are in sync.
        """
        size = active = zeros = ever_active = 0
        masks = {id(k["variable"]): k for k in self.kernels}
        for variable, count in self.budget:
            weight = ops.convert_to_numpy(variable)
            size += weight.size
            active += count
            zeros += int(np.sum(weight == 0))
            kernel = masks.get(id(variable))
            if kernel is None:
                ever_active += weight.size
            else:
                mask = ops.convert_to_numpy(kernel["mask"])
                counter = ops.convert_to_numpy(kernel["counter"])
                ever_active += int(np.sum((mask > 0) | (counter > 0)))
        step = int(ops.convert_to_numpy(self.step))
        fraction = updates.drop_fraction_at(
            step + 1,
            int(ops.convert_to_numpy(self.start_step)),
            int(ops.convert_to_numpy(self.end_step_variable)),
            self.drop_fraction,
        )
        return {
            "skipped_updates": int(ops.convert_to_numpy(self.skipped_updates)),
            "sparsity": 1.0 - active / size if size else 0.0,
            "zero_fraction": zeros / size if size else 0.0,
            "coverage": ever_active / size if size else 0.0,
            "drop_fraction": float(ops.convert_to_numpy(fraction))
            if self.method.updates_masks
            else 0.0,
        }

    # --- serialization ---------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            # Plain types: TF wraps attributes in its own tracking containers.
            "densities": dict(self.densities)
            if hasattr(self.densities, "items")
            else list(self.densities),
            "method": {"name": self.method.name, "config": self.method.get_config()},
            "update_freq": self.update_freq,
            "drop_fraction": self.drop_fraction,
            "end_step": self.end_step,
            "rescale": self.rescale,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        method = config.get("method")
        if isinstance(method, dict):
            config["method"] = methods.get(method["name"]).from_config(method["config"])
        return cls(inner, **config)
