"""Backend control flow for the sparse step: conditional assignment inside
a compiled step, `tf.distribute`'s cross-replica path, seeds computed in the
step, and the aggregation of counters.

Everything backend-specific that `SparseOptimizer` needs lives here, so the
optimizer reads as state plus step.
"""

import keras
from keras import ops


class StepSeed(keras.random.SeedGenerator):
    """A seed computed inside the compiled step.

    `keras.random` takes an int or a `SeedGenerator`; drawing from a real
    generator would assign its state inside `ops.cond`, which JAX forbids.
    """

    def __init__(self, value):
        self._value = value

    def next(self, ordered=True):
        return self._value


def step_seed(step, seed, number):
    """A seed new at every step and for every kernel `number`, the same on
    all backends."""
    value = ops.stack([ops.cast(step, "int32"), ops.cast(seed % 2**20 + number, "int32")])
    return StepSeed(ops.cast(value, keras.src.backend.random_seed_dtype()))


def _tf_replicas():
    """How many replicas the current `tf.distribute` strategy runs."""
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def counter_aggregation():
    """How the optimizer's scalar counters aggregate across replicas.

    Under `tf.distribute` every replica holds the same counters: an
    `assign_add` from the replicas takes the first one's value. Only there:
    elsewhere on TF that aggregation costs ~3% of a small step.
    """
    replicated = keras.backend.backend() == "tensorflow" and _tf_replicas() > 1
    return "only_first_replica" if replicated else "none"


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


def cond_assign(predicate, compute, targets, grads=()):
    """`targets[i].assign(compute(*grads)[i])` when `predicate()` holds.

    JAX forbids assignments inside `ops.cond`, so there both branches return
    values and the assignment happens outside (free in a stateless step).
    Elsewhere the assignment stays inside the branch, so a skipped step
    copies nothing; torch uses a plain `if`. Under `tf.distribute` the branch
    runs once for all replicas, on the summed gradients.
    """
    if not targets:
        return
    grads = list(grads)
    context = _multi_replica_context()
    if context is not None:

        def cross_replica(strategy, grads):
            _cross_replica_cond_assign(strategy, predicate, compute, targets, grads)

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


def _cross_replica_cond_assign(strategy, predicate, compute, targets, grads):
    """`cond_assign` in TensorFlow's cross-replica context: `grads` hold one
    value per replica. A collective cannot run inside a replica's `cond`, so
    the condition is taken here; only when it holds are the gradients summed
    across replicas (as the inner optimizer sums them) and `compute` run on
    every device, where reads and writes of the mirrored variables touch that
    device's copy."""
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


def eager_torch():
    """Whether steps run eagerly on torch, where the host can keep the step
    count itself instead of reading it from the device each step (a
    synchronisation on a GPU). Under torch.compile it cannot."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return not torch.compiler.is_compiling()
