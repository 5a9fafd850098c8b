"""What the examples do around training: the devices (`--distribute`),
the precision (`--dtype-policy`), and runs that resume after a kill.

Launch commands (docs/scaling-out.md): one host uses every local
accelerator with `--distribute auto` (the default): JAX through
`keras.distribution.DataParallel`, TensorFlow through `MirroredStrategy`;
PyTorch trains on one device (Keras has no multi-device `fit` on torch).
Several JAX hosts: set `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
`KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID` on
every host and run the same command; `keras.distribution.initialize()`
joins them and `DataParallel` spans all their devices. Several TensorFlow
hosts (`TF_CONFIG`) are refused with the reason: Keras's own `fit` fails
under `MultiWorkerMirroredStrategy` today.
"""

import contextlib
import json
import os
import time

import keras

BACKUP = "backup"


def add_arguments(parser):
    parser.add_argument(
        "--distribute", choices=("auto", "none"), default="auto",
        help="auto: every local accelerator (JAX DataParallel, TF MirroredStrategy) and, on JAX, "
        "every host named by KERAS_DISTRIBUTION_* variables; none: one device",
    )
    parser.add_argument(
        "--dtype-policy", default="auto",
        help="a Keras dtype policy (float32, mixed_bfloat16, mixed_float16); auto: mixed_bfloat16 "
        "on GPU/TPU, float32 on CPU",
    )


def _accelerators():
    """The local accelerators (GPU/TPU) of the backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [d for d in jax.local_devices() if d.platform != "cpu"]
    if backend == "tensorflow":
        import tensorflow as tf

        # Physical: listing logical devices would fix the device setup.
        return tf.config.list_physical_devices("GPU") + tf.config.list_physical_devices("TPU")
    import torch

    return list(range(torch.cuda.device_count()))


def free_cores(seconds=0.25):
    """How many of this process's cores other work leaves idle, measured
    over `seconds` from /proc/stat (Linux); None where it can't be read."""
    try:
        cores = {f"cpu{c}" for c in os.sched_getaffinity(0)}

        def idle_and_total():
            idle = total = 0
            with open("/proc/stat") as f:
                for line in f:
                    name, *fields = line.split()
                    if name in cores:
                        values = [int(v) for v in fields[:8]]
                        idle, total = idle + values[3] + values[4], total + sum(values)
            return idle, total

        idle0, total0 = idle_and_total()
        time.sleep(seconds)
        idle1, total1 = idle_and_total()
    except (OSError, AttributeError, ValueError):
        return None
    return len(cores) * (idle1 - idle0) / max(total1 - total0, 1)


def torch_threads_for_free_cores():
    """On torch, one intra-op thread per free core (at least one), unless the
    user chose (OMP_NUM_THREADS / MKL_NUM_THREADS): torch starts one thread
    per core, and on a busy machine they wait on each other. Measured: the
    quickstart on a loaded 2-core machine took 458 s with torch's default
    and ~20 s with one thread (issue 37). Says what it did."""
    if keras.backend.backend() != "torch" or os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return
    import torch

    free = free_cores()
    if free is None:
        return
    threads = max(1, min(torch.get_num_threads(), int(free + 0.5)))
    if threads < torch.get_num_threads():
        print(f"torch: {threads} thread(s), as {free:.1f} of {torch.get_num_threads()} cores are free "
              "(set OMP_NUM_THREADS to choose)", flush=True)
        torch.set_num_threads(threads)


def configure(args):
    """Sets the dtype policy and the distribution; returns a function giving
    the scope to build and compile the model in. The tests run the
    distributed path on CPU with two devices: `KERAS_DSTEE_CPU_DEVICES=2`
    splits the CPU on TensorFlow, `XLA_FLAGS=--xla_force_host_platform_device_count=2`
    on JAX."""
    torch_threads_for_free_cores()
    policy = args.dtype_policy
    if policy == "auto":
        policy = "mixed_bfloat16" if _accelerators() else "float32"
    keras.config.set_dtype_policy(policy)
    args.dtype_policy = policy
    args.devices = 1
    if args.distribute == "none":
        return contextlib.nullcontext
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
            keras.distribution.initialize()
        devices = jax.devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            args.devices = len(devices)
        return contextlib.nullcontext
    if backend == "tensorflow":
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            # keras_dstee supports MultiWorkerMirroredStrategy, but Keras's
            # own `fit` does not yet (docs/scaling-out.md).
            raise SystemExit(
                "TF_CONFIG is set, but Keras 3's `fit` fails under MultiWorkerMirroredStrategy "
                "(keras-team/keras#20585), so these examples cannot train on several TensorFlow "
                "hosts yet. Use JAX for several hosts (KERAS_DISTRIBUTION_* variables), or unset "
                "TF_CONFIG."
            )
        split = int(os.environ.get("KERAS_DSTEE_CPU_DEVICES", "1"))
        if not tf.config.list_physical_devices("GPU") and split > 1:
            # Tests only: MirroredStrategy over logical CPUs is slow (a
            # ResNet-50 smoke took 5 min), so a CPU run uses one device.
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * split)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if len(devices) > 1:
            strategy = tf.distribute.MirroredStrategy(devices)
            args.devices = strategy.num_replicas_in_sync
            return strategy.scope
    return contextlib.nullcontext


def resumed_epoch(out):
    """The epoch a run in `out` continues from: what `BackupAndRestore`
    recorded before a kill, else 0. The input pipelines start there, so a
    resumed run sees the batches an uninterrupted one would."""
    path = os.path.join(out, BACKUP, "training_metadata.json")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


class ImagesPerSecond(keras.callbacks.Callback):
    """Adds `images_per_second` (training throughput) to every epoch's logs."""

    def __init__(self, batch_size, steps):
        super().__init__()
        self.images = batch_size * steps

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["images_per_second"] = self.images / (time.perf_counter() - self.start)


class StopAfterEpoch(keras.callbacks.Callback):
    """Ends the process abruptly after an epoch, as a preemption would: for
    testing resumption (`KERAS_DSTEE_EXAMPLE_STOP_AFTER_EPOCH=N`)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            os._exit(3)


def callbacks(out, batch_size, steps, resuming, backup=True):
    """Backup (a rerun of the same command continues; not for a run that
    shrinks, whose backup would not fit the full-width model), throughput,
    CSV and TensorBoard logs, all under `out`; the sparse callback comes
    first."""
    result = [keras.callbacks.BackupAndRestore(os.path.join(out, BACKUP))] if backup else []
    result += [
        ImagesPerSecond(batch_size, steps),
        keras.callbacks.CSVLogger(os.path.join(out, "log.csv"), append=resuming),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
    ]
    stop = os.environ.get("KERAS_DSTEE_EXAMPLE_STOP_AFTER_EPOCH")
    if stop:
        result.append(StopAfterEpoch(int(stop)))
    return result
