"""Putting the sparse-training wrapper around a model's optimizer, and
taking it off again, side by side (as tfmot keeps `prune_low_magnitude` and
`strip_pruning` together)."""

import contextlib

from keras_dstee.training.constraints import MaskConstraint
from keras_dstee.training.optimizer import SparseOptimizer
from keras_dstee.training.optimizer import find_sparse_optimizer


def wrap(model, inner_optimizer, densities, **settings):
    """Puts a `SparseOptimizer(inner_optimizer, densities, **settings)` in
    place of `inner_optimizer`, the model's optimizer or the one inside its
    `LossScaleOptimizer` (under mixed precision, which then unscales the
    gradients and skips non-finite steps for both), builds it and masks the
    kernels. Returns the wrapper."""
    # Under `tf.distribute`, the wrapper's variables are mirrored like the
    # model's: create them in the model's strategy scope.
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        wrapper = SparseOptimizer(inner_optimizer, densities, **settings)
        wrapper.build(model.trainable_variables)
        wrapper.install()
    _replace_optimizer(model, inner_optimizer, wrapper)
    # The train step may have been traced with the old optimizer.
    model.make_train_function(force=True)
    return wrapper


def strip(model):
    """Removes the sparse-training wrapper from `model`, in place.

    The weights are untouched (already exactly sparse). The model's optimizer
    becomes the user's original one, the mask constraints leave its variables
    (constraints the user set are put back), and a `.keras` file saved
    afterwards loads without `keras_dstee` installed.

    Returns:
        The same model.
    """
    optimizer = find_sparse_optimizer(getattr(model, "optimizer", None))
    if optimizer is None:
        return model
    for variable in model.trainable_variables:
        if isinstance(variable.constraint, MaskConstraint):
            variable.constraint = variable.constraint.user_constraint
    _replace_optimizer(model, optimizer, optimizer.inner_optimizer)
    model.train_function = None
    return model


def _replace_optimizer(model, old, new):
    """`new` where the model holds `old`: as its optimizer or inside its
    `LossScaleOptimizer`. The compile config then names `new` unless it
    holds the model's `LossScaleOptimizer` (which names its inner one), so
    `model.save` records the optimizer actually used."""
    if model.optimizer is old:
        model.optimizer = new
    else:
        model.optimizer.inner_optimizer = new
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None and compile_config.config.get("optimizer") is not model.optimizer:
        compile_config.config["optimizer"] = new
