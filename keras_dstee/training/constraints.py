"""The constraint that keeps inactive weights at exactly zero."""

import keras
from keras import ops


def masked(x, mask):
    """`x` where `mask` is 1, exactly 0 elsewhere (even where `x` is NaN,
    which a product with 0 would keep)."""
    return ops.where(ops.convert_to_tensor(mask) > 0, x, ops.zeros_like(x))


class MaskConstraint(keras.constraints.Constraint):
    """Zeroes a weight outside its mask after every optimizer step.

    Keras applies variable constraints inside the compiled step, right after
    the optimizer update. The mask is a variable of `SparseOptimizer`, so every
    backend threads its current value through the step. A constraint the user
    already set on the weight is applied first and kept in `user_constraint`.
    It is attached to the variable only, never to the layer's config.
    """

    def __init__(self, mask, user_constraint=None):
        self.mask = mask
        self.user_constraint = user_constraint

    def __call__(self, w):
        # On JAX constraints receive the Variable itself.
        w = ops.convert_to_tensor(w)
        if self.user_constraint is not None:
            w = self.user_constraint(w)
        return masked(w, self.current_mask())

    def current_mask(self):
        """The 0/1 mask (or one broadcastable to the weight) to apply now."""
        return self.mask
