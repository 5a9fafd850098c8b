"""Pure drop-and-grow functions on tensors, written with `keras.ops`.

Everything here is a function of tensors with static shapes, so it runs
unchanged inside a compiled train step on TensorFlow, JAX and PyTorch. When
an update happens and how much it moves is `schedule`'s.
"""


from keras import ops


def grow_scores(grad, counter, step, exploration, epsilon, normalize=True, bonus_scale=1.0, dense_size=None):
    """DST-EE's acquisition score `|g| / mean|g| + c * sqrt(ln t / (N + eps))`.

    With `normalize`, the gradient term is divided by its mean over the kernel
    so that `exploration` means the same in every layer and every model (|g|
    alone varies by orders of magnitude); without it the score is the paper's
    `|g| + c * sqrt(...)`. Dividing by a positive constant does not change the
    order within a kernel, so `exploration=0` ranks exactly like RigL; that
    case skips the bonus and the division entirely, which also avoids
    `0 * inf` when `N = 0` and `epsilon = 0`. `bonus_scale` multiplies the
    bonus (a decay over training). `dense_size`: the positions the mean
    runs over when the kernel has lost some to shrinking (their gradient
    was 0); by default its own size.
    """
    magnitude = ops.abs(ops.cast(grad, "float32"))
    if exploration == 0:
        return magnitude
    if normalize:
        mean = ops.mean(magnitude) if dense_size is None else ops.sum(magnitude) / dense_size
        magnitude = magnitude / (mean + 1e-12)
    log_t = ops.log(ops.maximum(ops.cast(step, "float32"), 1.0))
    bonus = ops.sqrt(log_t / (counter + epsilon))
    return magnitude + (exploration * bonus_scale) * bonus


def drop_and_grow(keep_scores, mask, scores, num_drop, max_drop, num_grow=None, max_grow=None):
    """One mask update on a single kernel.

    Drops the `num_drop` active positions with the lowest `keep_scores`
    (e.g. the weight magnitudes), then activates the `num_grow` inactive
    positions (just-dropped ones included) with the highest `scores`. With
    `num_grow` left out it equals `num_drop`, and the number of active
    positions is unchanged.

    Args:
        keep_scores: drop scores, any shape (lower is dropped first).
        mask: float 0/1 tensor of the same shape.
        scores: grow scores of the same shape (higher grows first); unused
            when `max_grow` is 0.
        num_drop: scalar int tensor, how many to drop; at most `max_drop`.
        max_drop: Python int, the static bound `top_k` needs.
        num_grow, max_grow: the same for growing.

    Returns:
        `(new_mask, grown)`: the new 0/1 mask and the 0/1 indicator of the
        positions that became active (their weights and slots start at 0).
    """
    if num_grow is None:
        num_grow, max_grow = num_drop, max_drop
    shape = ops.shape(mask)
    mask = ops.reshape(ops.cast(mask, "float32"), (-1,))
    keep = ops.reshape(ops.cast(keep_scores, "float32"), (-1,))

    # Drop: the lowest active keep scores (inactive positions rank last).
    inf = ops.convert_to_tensor(float("inf"))
    _, drop_index = ops.top_k(-ops.where(mask > 0, keep, inf), max_drop)
    drop_value = ops.where(ops.arange(max_drop) < num_drop, 0.0, ops.take(mask, drop_index))
    dropped = ops.scatter_update(mask, drop_index[:, None], drop_value)
    if max_grow == 0:
        return ops.reshape(dropped, shape), ops.zeros(shape)

    # Grow: the best-scoring positions that are inactive after the drop.
    scores = ops.reshape(ops.cast(scores, "float32"), (-1,))
    _, grow_index = ops.top_k(ops.where(dropped > 0, -inf, scores), max_grow)
    grow_value = ops.where(ops.arange(max_grow) < num_grow, 1.0, ops.take(dropped, grow_index))
    new_mask = ops.scatter_update(dropped, grow_index[:, None], grow_value)

    grown = new_mask * (1.0 - dropped)
    return ops.reshape(new_mask, shape), ops.reshape(grown, shape)
