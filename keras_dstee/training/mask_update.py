"""The mask update inside the compiled step: install the initial masks,
and at each due step drop and grow every kernel's weights (and, with
channel sparsity, remove channels), as a pure function of tensors under
`ops.cond` whose results are assigned after it.

The functions read the `SparseOptimizer`'s state (kernels, schedule
variables, settings) and write it through `control.cond_assign`; when an
update is due is `schedule`'s.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_dstee.training import blocks
from keras_dstee.training import channel_sparsity as channel_rules
from keras_dstee.training import control
from keras_dstee.training import schedule
from keras_dstee.training import updates
from keras_dstee.training.constraints import masked
from keras_dstee.training.kernels import largest_mask


def install(optimizer, kernels):
    """Masks (and, with `rescale`, scales by `1 / sqrt(density)`) the kernels
    on the first step after a build, once."""

    by_magnitude = optimizer.initial_mask == "magnitude"

    def masked_kernels():
        values = []
        for k in kernels:
            w = ops.convert_to_tensor(k.variable)
            mask = largest_mask(w, k) if by_magnitude else k.mask
            scale = math.sqrt(k.size / k.initial_active) if optimizer.rescale else 1.0
            values.append(masked(w, mask) * scale)
            if by_magnitude:
                values.append(mask)
        return values

    targets = [v for k in kernels for v in ([k.variable, k.mask] if by_magnitude else [k.variable])]
    control.cond_assign(lambda: ops.equal(optimizer.installed, 0), masked_kernels, targets)
    optimizer.installed.assign(1)


def update_masks(optimizer, kernels_and_grads):
    """At a due step (`schedule.update_due`), each kernel's drop and grow from
    its dense gradient, and the channel update; the masks stay as they were
    when a gradient is not finite (counted in `skipped_updates`)."""
    kernels_and_grads = [(k, g) for k, g in kernels_and_grads if k.max_drop > 0 and g is not None]
    if not optimizer.changes_masks or not kernels_and_grads:
        return
    kernels = [k for k, _ in kernels_and_grads]
    targets = [optimizer.last_update, optimizer.skipped_updates]
    for k in kernels:
        targets += k.state
    others = []
    if optimizer.channels is not None:
        masked_positions = {k.index for k in kernels}
        others = [(p, v) for p, v in optimizer.channel_variables if p not in masked_positions]
        targets += [optimizer.channels.alive] + [v for _, v in others]
    at_end = schedule.updates_at_end(optimizer.method.initial_sparsity is not None, optimizer.channel_sparsity)

    def due():
        # Eager torch keeps the step on the host: no device read per step.
        if optimizer._host_ticked and control.eager_torch():
            return schedule.update_due(*optimizer._host_clock, optimizer.update_freq, at_end)
        return schedule.update_due(optimizer.step, optimizer.start_step, optimizer.end_step_variable, optimizer.update_freq, at_end)

    def compute(*grads):
        step = ops.convert_to_tensor(optimizer.step)
        fraction = schedule.drop_fraction_at(
            step, optimizer.start_step, optimizer.end_step_variable, optimizer.drop_fraction
        )
        # A non-finite gradient would corrupt the scores: keep the masks.
        finite = ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in grads]))
        elapsed = ops.cast(step - optimizer.last_update, "float32")
        skipped = optimizer.skipped_updates + ops.cast(ops.logical_not(finite), optimizer.skipped_updates.dtype)
        values = [step, skipped]
        allowed, target, alive = [None] * len(kernels), [None] * len(kernels), None
        if optimizer.channels is not None:
            weights = {p: ops.convert_to_tensor(v) for p, v in optimizer.channel_variables}
            base = [scheduled_target(optimizer, k, step) for k in kernels]
            alive, allowed, target = optimizer.channels.update(
                kernels, base, weights, step, optimizer.start_step, optimizer.end_step_variable
            )
        for number, (k, grad) in enumerate(zip(kernels, grads)):
            old = [ops.convert_to_tensor(v) for v in k.state]
            new = update_kernel(optimizer, k, grad, step, fraction, elapsed, number, allowed[number], target[number])
            values += [ops.where(finite, n, o) for n, o in zip(new, old)]
        if alive is not None:
            old = ops.convert_to_tensor(optimizer.channels.alive)
            values.append(ops.where(finite, alive, old))
            for position, variable in others:
                value = ops.convert_to_tensor(variable)
                new = masked(value, optimizer.channels.allowed(position, alive))
                values.append(ops.where(finite, new, value))
        return values

    control.cond_assign(due, compute, targets, [g for _, g in kernels_and_grads])

def scheduled_target(optimizer, kernel, step):
    """A pruning method's active blocks for `kernel` at `step`, on its
    cubic density schedule (a tensor)."""
    per_block = blocks.unit(kernel.block)
    initial_blocks, final_blocks = kernel.initial_active // per_block, kernel.active // per_block
    if optimizer.method.initial_sparsity is None:
        return ops.convert_to_tensor(final_blocks, "int32")
    # Over the kernel's size before any shrinking, as the budget is.
    cells = kernel.original_size // per_block
    density = schedule.scheduled_density(
        step,
        optimizer.start_step,
        optimizer.end_step_variable,
        initial_blocks / cells,
        final_blocks / cells,
    )
    return ops.clip(ops.cast(ops.round(density * cells), "int32"), final_blocks, initial_blocks)

def update_kernel(optimizer, kernel, grad, step, fraction, elapsed, number, allowed=None, target=None):
    """One kernel's mask update; returns its new `state`.

    Counts and scores are per block of `kernel.block` (per position when
    unstructured): a block's score sums its positions' scores. With
    channels, `allowed` is the kernel's live area and `target` how many
    weights it holds after the update.
    """
    block = kernel.block
    per_block = blocks.unit(block)
    mask = ops.convert_to_tensor(kernel.mask)
    counter = ops.convert_to_tensor(kernel.counter) + optimizer.method.activity(elapsed) * mask
    weight = ops.convert_to_tensor(kernel.variable)
    # A structured mask is constant in a block: its first position tells.
    grid_mask = mask if block is None else mask[..., :: block[0], :: block[1]]
    seed = control.step_seed(step, optimizer.seed, number)
    if allowed is not None:
        # Removed channels leave the mask; their weights are regrown
        # inside the live ones.
        grid_mask = grid_mask * allowed
        swaps = optimizer.has_grow_rule and kernel.active < kernel.original_size
        prune, regular, grow = channel_rules.update_counts(grid_mask, allowed, target, fraction if swaps else None)
        if optimizer.has_grow_rule:
            scores = grow_scores(optimizer, kernel, weight, grad, counter, step, seed)
        else:
            # A method without a grow rule regrows at random (SET's).
            scores = keras.random.uniform(ops.shape(weight), seed=seed)
        scores = ops.where(allowed > 0, scores, ops.full_like(scores, -np.inf))
        drop = prune + regular
    else:
        prune, budget = 0, kernel.active // per_block
        if optimizer.method.initial_sparsity is not None:
            target = scheduled_target(optimizer, kernel, step)
            prune = ops.maximum(ops.cast(ops.sum(grid_mask), "int32") - target, 0)
            budget = ops.cast(target, "float32")
        grow, scores = 0, None
        if kernel.max_grow > 0:
            grow = ops.cast(ops.ceil(fraction * budget), "int32")
            grow = ops.minimum(grow, kernel.max_grow)
            scores = blocks.to_blocks(grow_scores(optimizer, kernel, weight, grad, counter, step, seed), block)
        drop = prune + grow
    keep = blocks.to_blocks(optimizer.method.drop_scores(weight, grad), block)
    new_mask, grown = updates.drop_and_grow(keep, grid_mask, scores, drop, kernel.max_drop, grow, kernel.max_grow)
    new_mask, grown = blocks.from_blocks(new_mask, block), blocks.from_blocks(grown, block)
    if not optimizer.reset_regrown:
        grown = grown * (1.0 - mask)  # only positions new to the mask
    kept = new_mask * (1.0 - grown)
    new_slots = [masked(ops.convert_to_tensor(s), kept) for s in kernel.slots]
    return [new_mask, counter, masked(weight, kept)] + new_slots

def grow_scores(optimizer, kernel, weight, grad, counter, step, seed):
    extra = {}
    if optimizer._grow_takes_progress:
        extra["progress"] = schedule.progress_at(step, optimizer.start_step, optimizer.end_step_variable)
    if kernel.dense_size is not None and optimizer._grow_takes_dense_size:
        # A shrunk kernel's cut positions had gradient 0: a mean over the
        # kernel counts them, so it scores as its masked self.
        extra["dense_size"] = kernel.dense_size
    return optimizer.method.grow_scores(weight, grad, counter, step, seed, **extra)
