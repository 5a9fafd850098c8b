"""What the callbacks log: the sparsity, exact zeros, coverage and drop
fraction of a `SparseOptimizer`'s kernels, read on the host."""

import numpy as np
from keras import ops

from keras_dstee import host
from keras_dstee.training import schedule


def sparsity_stats(optimizer):
    """Current `sparsity`, `zero_fraction`, `coverage` and `drop_fraction`,
    as Python floats.

    All are measured over the kernels of the budget (those `densities`
    lists, kernels kept dense by ERK included), the ones the callbacks'
    `sparsity=` refers to. `sparsity` is the fraction of positions outside
    the masks: what was asked for (for a pruning method, where its
    schedule has got to). `zero_fraction` counts exact zeros, so it is a
    little higher right after a mask update (grown weights start at 0).
    `coverage` is the fraction of positions ever active, `drop_fraction`
    the fraction the next mask update would replace, and
    `skipped_updates` counts mask updates skipped for a non-finite
    gradient. Reads variable values: on JAX, call it through the model (a
    callback's `optimizer.model`) so the values are in sync.
    """
    size = active = zeros = ever_active = 0
    kernels = {id(k.variable): k for k in optimizer.kernels}
    for variable, _ in optimizer.budget:
        weight = host.to_numpy(variable)
        kernel = kernels.get(id(variable))
        # Positions a shrink cut away count as zeros, as in the masked run.
        cut = 0 if kernel is None else kernel.original_size - weight.size
        size += weight.size + cut
        zeros += int(np.sum(weight == 0)) + cut
        if kernel is None:
            active += weight.size
            ever_active += weight.size
            continue
        mask = host.to_numpy(kernel.mask)
        counter = host.to_numpy(kernel.counter)
        active += int(np.sum(mask))
        ever_active += int(np.sum((mask > 0) | (counter > 0))) + kernel.cut_ever_active
    step = int(host.to_numpy(optimizer.step))
    fraction = schedule.drop_fraction_at(
        step + 1,
        int(host.to_numpy(optimizer.start_step)),
        int(host.to_numpy(optimizer.end_step_variable)),
        optimizer.drop_fraction,
    )
    grows = optimizer.has_grow_rule
    return {
        "skipped_updates": int(host.to_numpy(optimizer.skipped_updates)),
        "sparsity": 1.0 - active / size if size else 0.0,
        "zero_fraction": zeros / size if size else 0.0,
        "coverage": ever_active / size if size else 0.0,
        "drop_fraction": float(ops.convert_to_numpy(fraction)) if grows else 0.0,
    }
