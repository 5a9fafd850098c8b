"""`shrink(model)`: the model and its optimizer, rebuilt without the
channels training removed, so the rest of the run computes less.

A channel the optimizer has removed (`channel_sparsity=`) outputs exactly 0
and never returns: every weight slice it owns is masked to 0, its gradient
is 0. Cutting it out changes no output and no later update, provided
everything the masked run carries is cut along the same channels: the
weights, BatchNormalization's moving statistics, the inner optimizer's slots
(momentum, Adam's m and v), the masks and activity counters, and the channel
plan. The kernels keep their budgets and the sizes the logged sparsity and
coverage are measured over (the positions cut away count as zeros), the
channel schedule keeps counting the channels already cut, and DST-EE's mean
|gradient| keeps its denominator, so the shrunk run takes the masked run's
decisions. (A method that grows at random, SET, draws over the smaller
kernel: its masks are as random, not the same.)
"""

import contextlib
import dataclasses

import keras
import numpy as np

from keras_dstee import arguments
from keras_dstee import host
from keras_dstee.structure import channels
from keras_dstee.structure import rebuilding
from keras_dstee.training.constraints import MaskConstraint
from keras_dstee.training.optimizer import SparseOptimizer
from keras_dstee.training.optimizer import find_sparse_optimizer


@dataclasses.dataclass
class Shrinkage:
    """What one `shrink` did.

    Attributes:
        optimizer: the optimizer now training the model (a new object).
        replaced: `{id(old variable): (new variable, {axis: cut positions})}`.
        weights_before: `model.weights` before, in order (to slice other
            copies of them, e.g. EarlyStopping's best weights).
        channels_before, channels_after: the removable channels the model had.
    """

    optimizer: object
    replaced: dict
    weights_before: list
    channels_before: int
    channels_after: int

    def slice_weights(self, values):
        """`values` (arrays in the order of `weights_before`) cut like the
        model's weights were."""
        result = []
        for variable, value in zip(self.weights_before, values):
            _, removed = self.replaced.get(id(variable), (None, {}))
            result.append(rebuilding.sliced(np.asarray(value), removed))
        return result


def shrink(model, optimizer=None):
    """Rebuilds `model` in place without the channels its `SparseOptimizer`
    has removed, and returns the optimizer that trains it from now on.

    `fit` with `shrink=True` calls it at epoch ends; a custom training loop
    calls it between steps and goes on with the returned optimizer:

    ```python
    optimizer = keras_dstee.shrink(model, optimizer)
    ```

    The model keeps its object, names and outputs; its layers get narrower
    variables. The new optimizer (a `SparseOptimizer`, inside a
    `LossScaleOptimizer` if the old one was) carries the old one's state
    sliced along the same channels: slots, step counters, masks, activity
    counters, schedule, random seed. The model's compiled functions are
    reset, so `fit`, `evaluate` and `predict` retrace for the new shapes.
    Nothing changes when no removed channel is left to cut.

    Args:
        model: a built Functional or Sequential model trained with
            `channel_sparsity` (a callback's or `SparseOptimizer`'s).
        optimizer: the optimizer training it, for a custom loop whose model
            was not compiled with it; by default `model.optimizer`, which is
            then replaced by the new one.

    Returns:
        The optimizer to train with from now on (the same object when
        nothing was cut).

    Raises:
        ValueError: before anything changes, for a model or optimizer this
            cannot shrink. An error while rebuilding restores the model as
            it was.
    """
    return shrink_with_record(model, optimizer).optimizer


def shrink_with_record(model, optimizer=None):
    """`shrink`, returning its `Shrinkage` record."""
    arguments.keras_model(model, "shrink")
    compiled_with = getattr(model, "optimizer", None)
    optimizer = compiled_with if optimizer is None else optimizer
    sparse = find_sparse_optimizer(optimizer)
    if sparse is None or not sparse.built or sparse.channels is None:
        raise ValueError(
            "`shrink` cuts out the channels a `SparseOptimizer` with `channel_sparsity` has "
            f"removed; {model.name!r} is trained by {optimizer!r}. Train with e.g. "
            "`DSTEE(sparsity=0.9, channel_sparsity=0.5, shrink=True)`."
        )
    channels.check_graph_model(model, "shrink")
    groups = [g for g in channels.channel_groups(model) if g.removable]
    plan = sparse.channel_plan
    if [g.size for g in groups] != list(plan.sizes):
        raise ValueError(
            f"The model's removable channels {[g.size for g in groups]} are not the ones its "
            f"optimizer trains {list(plan.sizes)}: the model changed after training started."
        )
    problems = rebuilding.unrebuildable(model, groups)
    if problems:
        raise ValueError(
            "`shrink` can't narrow " + "; ".join(f"{name} ({why})" for name, why in problems)
            + ": use the built-in layer classes there, or train without `shrink` and call "
            "`keras_dstee.slim(model)` after training."
        )
    gone = channels_to_cut(sparse)
    offsets = plan.offsets
    before = int(plan.total)
    if not gone.any():
        return Shrinkage(optimizer, {}, list(model.weights), before, before)
    cut, widths = rebuilding.channel_cut(
        [(group, np.flatnonzero(gone[offsets[g] : offsets[g + 1]])) for g, group in enumerate(groups)]
    )
    state = _OptimizerState(optimizer, sparse, cut, gone)
    weights_before = list(model.weights)
    replaced, undo = rebuilding.cut_in_place(model, cut, widths)
    try:
        new = state.rebuilt(model, replaced)
    except BaseException:
        undo()
        raise
    if compiled_with is optimizer:
        _replace_compiled_optimizer(model, optimizer, sparse, new)
    _reset_compiled_functions(model)
    return Shrinkage(new, replaced, weights_before, before, int(np.sum(~gone)))


def channels_to_cut(sparse):
    """Per channel of `sparse`'s plan, whether a shrink cuts it: removed or
    dead, except one channel of a group that has none left (a layer keeps
    one)."""
    alive = host.to_numpy(sparse.channels.alive) > 0
    gone = ~alive
    offsets = sparse.channel_plan.offsets
    for g in range(len(sparse.channel_plan.sizes)):
        if not alive[offsets[g] : offsets[g + 1]].any():
            gone[offsets[g]] = False
    return gone


class _OptimizerState:
    """An optimizer's state read to the host and cut along the channels,
    before the model changes (anything that can't be cut fails here)."""

    def __init__(self, optimizer, sparse, cut, gone):
        self.optimizer, self.sparse, self.gone = optimizer, sparse, gone
        variables = sparse._trainable_variables
        self.removed = [{a: sorted(p) for a, p in cut.get(id(v), {}).items()} for v in variables]
        self.prefixes = sorted(
            ((v.path.replace("/", "_") + "_", i) for i, v in enumerate(variables)), key=lambda p: -len(p[0])
        )
        self.inner = self._values(sparse.inner_optimizer.variables)
        self.own = self._values(sparse._variables, skip=("channels_alive",))
        self.alive = host.to_numpy(sparse.channels.alive)[~gone]
        self.outer = None
        if optimizer is not sparse:  # a LossScaleOptimizer around it
            self.outer = {v.name: host.to_numpy(v) for v in optimizer._variables}
        self.records = self._kernel_records()
        self.dense_size = np.asarray(sparse.channels.dense_size[: sparse.channel_plan.total])

    def _values(self, variables, skip=()):
        """`{name: value cut like the variable it belongs to}`; a value of
        another shape than its variable (a factored slot) is refused."""
        values = {}
        for v in variables:
            if v.name in skip:
                continue
            value = host.to_numpy(v)
            position = next((i for prefix, i in self.prefixes if v.name.startswith(prefix)), None)
            removed = {} if position is None else self.removed[position]
            if removed:
                own_shape = tuple(self.sparse._trainable_variables[position].shape)
                if value.shape != own_shape:
                    raise ValueError(
                        f"`shrink` can't cut the optimizer variable {v.name!r} of shape {value.shape}: "
                        f"it is not shaped like its weight {own_shape}. Use an optimizer whose slots "
                        "are (SGD, Adam, AdamW, RMSprop, ...)."
                    )
                value = rebuilding.sliced(value, removed)
            values[v.name] = value
        return values

    def _kernel_records(self):
        records = []
        for k in self.sparse.kernels:
            removed = self.removed[k.index]
            cut_ever = 0
            if removed:
                ever = (host.to_numpy(k.mask) > 0) | (host.to_numpy(k.counter) > 0)
                cut_ever = int(ever.sum() - rebuilding.sliced(ever, removed).sum())
            records.append([k.index, k.active, k.initial_active, k.original_size, k.cut_ever_active + cut_ever])
        return records

    def rebuilt(self, model, replaced):
        """The new optimizer, built on the model's new variables, holding
        the cut state."""
        sparse = self.sparse
        variables = [replaced.get(id(v), (v, None))[0] for v in sparse._trainable_variables]
        for v in variables:
            # The new optimizer masks them again; the user's constraint stays.
            while isinstance(v.constraint, MaskConstraint):
                v.constraint = v.constraint.user_constraint
        strategy = getattr(model, "distribute_strategy", None)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            inner = type(sparse.inner_optimizer).from_config(sparse.inner_optimizer.get_config())
            inner.build(variables)
            config = sparse.get_config()
            for key in ("inner_optimizer", "method", "name"):
                config.pop(key)
            config["channel_groups"] = sparse.channel_plan.without(self.gone, self.dense_size).get_config()
            config["shrunk"] = self.records
            new = SparseOptimizer(inner, method=sparse.method, name=sparse.name, **config)
            new.build(variables)
            outer = new
            if self.outer is not None:
                old = self.optimizer
                outer = keras.optimizers.LossScaleOptimizer(
                    new, initial_scale=old.initial_scale, dynamic_growth_steps=old.dynamic_growth_steps
                )
                outer.build(variables)
        _assign(inner.variables, self.inner)
        _assign(new._variables, self.own, skip=("channels_alive",))
        new.channels.alive.assign(self.alive)
        if self.outer is not None:
            _assign(outer._variables, self.outer)
        new._install_pending = sparse._install_pending
        return outer


def _assign(variables, values, skip=()):
    for v in variables:
        if v.name in skip:
            continue
        if v.name not in values:
            raise RuntimeError(f"The rebuilt optimizer has a variable {v.name!r} the old one had not.")
        v.assign(values[v.name])


def _replace_compiled_optimizer(model, old, old_sparse, new):
    """`new` as the model's optimizer, and in its compile config (what
    `model.save` records and loading compiles with) in place of the old
    one or of the old `SparseOptimizer` inside it."""
    model.optimizer = new
    config = getattr(model, "_compile_config", None)
    if config is not None:
        recorded = config.config.get("optimizer")
        if recorded is old_sparse:
            config.config["optimizer"] = find_sparse_optimizer(new)
        elif recorded is old:
            config.config["optimizer"] = new


def _reset_compiled_functions(model):
    """The compiled train/test/predict functions traced the old variables:
    new ones, traced at their next call."""
    if getattr(model, "compiled", False):
        # `fit` calls it directly: it must exist now.
        model.make_train_function(force=True)
    # `evaluate` and `predict` make theirs when they find none.
    model.test_function = None
    model.predict_function = None
    if hasattr(model, "_jax_state_synced"):
        # The state `fit` holds is the old model's: read the new one at the
        # next epoch, and let no callback write the old one back.
        model._jax_state = None
        model._jax_state_synced = True
