"""Shared pieces of the benchmarks: CIFAR-10 data, a small CNN, one training run."""

import json
import os
import platform
import statistics
import time

import keras
import numpy as np

import keras_dstee

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10 = os.environ.get("CIFAR10", os.path.join(ROOT, "..", "shared", "data", "cifar10.npz"))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
# Dense first, then every registered method (registration order).
METHODS = ("dense", *keras_dstee.methods.names())


def machine(unit="CPUs"):
    """The machine a figure was measured on, for a table's header."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} {unit}"


def write_table(path, text):
    """Writes a benchmark's markdown table (`text`, header included) to
    `path` and prints it."""
    with open(path, "w") as f:
        f.write(text + "\n")
    print(text)


def continue_report(out, report, setup_keys):
    """`report` with the runs of a previous result file `out` kept when its
    setup (`setup_keys`) is the same: re-running a benchmark continues."""
    if os.path.isfile(out):
        with open(out) as f:
            previous = json.load(f)
        if all(previous.get(k) == report[k] for k in setup_keys):
            report["runs"] = previous["runs"]
    return report


def spread(values):
    """Sample standard deviation; 0 for a single value (one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def load_cifar10(path=CIFAR10, train_size=None, train_offset=0):
    """The shared CIFAR-10 file: 20k training images, the full test set,
    standardised per channel with the training statistics; with
    `train_size`, the training images `train_offset` to
    `train_offset + train_size`."""
    if not os.path.isfile(path):
        raise SystemExit(f"CIFAR-10 file not found: {path} (see ../shared/data/README.md)")
    data = np.load(path)
    x_train = data["x_train"].astype("float32") / 255.0
    x_test = data["x_test"].astype("float32") / 255.0
    mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = data["y_train"].astype("int32"), data["y_test"].astype("int32")
    if train_size:
        end = train_offset + train_size
        if end > len(x_train):
            raise SystemExit(f"--train-offset {train_offset} + --train-size {train_size} > {len(x_train)} images")
        x_train, y_train = x_train[train_offset:end], y_train[train_offset:end]
    return (x_train, y_train), (x_test, y_test)


def small_cnn(num_classes=10, width=1.0):
    """A 0.29M-parameter VGG-style CNN (6 convs with batch norm) that trains on
    CIFAR-10 in minutes on a CPU; `width` multiplies its channel counts."""
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomTranslation(0.125, 0.125, fill_mode="constant")(x)
    for channels in (32, 64, 128):
        for _ in range(2):
            x = layers.Conv2D(round(channels * width), 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="small_cnn")


def augmented_mlp(num_classes=10):
    """`keras_dstee.models.mlp_cifar` behind the flip and translation of
    `small_cnn` (inactive at inference)."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant")(x)
    return keras.Model(inputs, keras_dstee.models.mlp_cifar(num_classes)(x), name="mlp")


BUILDERS = {
    "small_cnn": small_cnn,
    "mlp": augmented_mlp,
    "resnet50_cifar": lambda: keras_dstee.models.resnet50_cifar(10),
    # VGG-19 at a quarter of its width: what 2 CPU cores train in minutes.
    "vgg19_quarter": lambda: keras_dstee.models.vgg19_cifar(10, width=0.25),
    # Half the channels of every conv: what `channel_sparsity=0.5` with
    # `min_channels=1.0` leaves of the two above.
    "small_cnn_half": lambda: small_cnn(width=0.5),
    "vgg19_eighth": lambda: keras_dstee.models.vgg19_cifar(10, width=0.125),
    "resnet50_quarter": lambda: keras_dstee.models.resnet50_cifar(10, width=0.25),
    "resnet50_eighth": lambda: keras_dstee.models.resnet50_cifar(10, width=0.125),
}


def make_callback(method, sparsity, seed, update_freq=100, **kwargs):
    """The sparse-training callback for a registered `method`, or None for dense."""
    if method == "dense":
        return None
    return keras_dstee.SparseTraining(method, sparsity=sparsity, seed=seed, update_freq=update_freq, **kwargs)


def train_cifar(method, sparsity, seed, epochs, data, batch_size=128, lr=0.05, update_freq=100,
                model="small_cnn", curves=False, recalibrate=False, **method_args):
    """Trains `model` (a name in `BUILDERS`) once; returns test accuracy,
    coverage and time (with `channel_sparsity`, also each layer's live
    channels); with `curves`, also per-epoch training `accuracy`,
    `val_accuracy` (on the first 2,000 test images) and `coverage`; with
    `recalibrate`, the test accuracy after `keras_dstee.recalibrate_batch_norm`
    on 2,048 training images, and the one before as `test_accuracy_stale_bn`."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    name = model
    model = BUILDERS[name]()
    steps = int(np.ceil(len(x_train) / batch_size)) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callback = make_callback(method, sparsity, seed, update_freq, **method_args)
    start = time.time()
    history = model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0,
        callbacks=[callback] if callback else [],
        validation_data=(x_test[:2000], y_test[:2000]) if curves else None,
    )
    seconds = time.time() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=500, verbose=0)
    before = {}
    if recalibrate:
        keras_dstee.recalibrate_batch_norm(model, x_train, batch_size=batch_size)
        before = {"test_accuracy_stale_bn": float(accuracy), "recalibrated": True}
        _, accuracy = model.evaluate(x_test, y_test, batch_size=500, verbose=0)
    stats = callback.optimizer.sparsity_stats() if callback else {"sparsity": 0.0, "coverage": 1.0}
    live = {}
    if callback and callback.channel_sparsity:
        # Where the channels went: each layer's live output channels.
        kernels = keras_dstee.summary(model, print_fn=lambda line: None, optimizer=callback.optimizer)["kernels"]
        live = {"live_per_layer": {k["layer"]: [k["live_channels"], k["channels"]] for k in kernels if k["channels"]}}
    return {
        "method": method,
        "sparsity": sparsity if callback else 0.0,
        "seed": seed,
        "epochs": epochs,
        "test_accuracy": float(accuracy),
        "actual_sparsity": stats["sparsity"],
        "coverage": stats["coverage"],
        "live_channels": history.history.get("live_channels", [None])[-1],
        "train_seconds": seconds,
        "update_freq": update_freq,
        "model": name,
        **method_args,
        **live,
        **before,
        **({"curves": {k: history.history.get(k) for k in ("accuracy", "val_accuracy", "coverage")}} if curves else {}),
    }
