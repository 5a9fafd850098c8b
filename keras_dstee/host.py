"""Reading a variable's value on the host, in every process.

Under a multi-process JAX `keras.distribution` a kernel sharded across
processes is not addressable from any single one: each process then gathers
the whole value (a collective, so every process must make the same calls).
"""

import keras
import numpy as np


def to_numpy(value):
    """The full value of a variable or tensor, as a numpy array."""
    if keras.backend.backend() == "jax":
        import jax

        array = getattr(value, "value", value)
        if isinstance(array, jax.Array) and not array.is_fully_addressable and not array.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return keras.ops.convert_to_numpy(value)


def same_in_every_process(seed):
    """`seed` as process 0 drew it, in every process of a multi-process run
    (JAX `jax.distributed`, TensorFlow `MultiWorkerMirroredStrategy`,
    `torch.distributed`), so that random masks and random growth agree
    everywhere even when the processes' numpy states differ."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and getattr(
            strategy.extended, "_in_multi_worker_mode", lambda: False
        )()
        if multi_worker:
            # Worker 0's replicas hold the seed, the others 0; a sum then
            # holds it once per replica of worker 0.
            mine = seed if strategy.cluster_resolver.task_id == 0 else 0
            local = len(strategy.extended.worker_devices)
            total = strategy.reduce("SUM", strategy.run(lambda: tf.constant(mine, tf.int64)), axis=None)
            return int(total.numpy()) // local
    elif backend == "jax":
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return int(multihost_utils.broadcast_one_to_all(np.int32(seed)))
    elif backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import torch

            value = torch.tensor([seed], dtype=torch.int64)
            dist.broadcast(value, src=0)
            return int(value.item())
    return seed
