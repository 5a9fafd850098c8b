"""What the paper-setup examples share: arguments, data, training, outputs."""

import argparse
import json
import os
import socket
import time

import keras
import numpy as np
import runtime

import keras_dstee

METHODS = (*keras_dstee.methods.names(), "dense")


def parser(description, defaults):
    """The examples' common command line; `defaults` sets per-example values.
    `--help` shows every default."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="dstee", help="sparse-training method")
    p.add_argument("--sparsity", type=float, default=0.9, help="global sparsity of the prunable kernels")
    p.add_argument("--epochs", type=int, default=defaults["epochs"], help="training epochs")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="global batch size")
    p.add_argument("--lr", type=learning_rate, default=defaults["lr"], help=defaults.get("lr_help", "peak learning rate"))
    p.add_argument("--update-freq", type=int, default=100, help="steps between mask updates")
    p.add_argument(
        "--block-size", type=block_size, default=defaults.get("block_size"),
        help="IxO, e.g. 4x1: masks change in blocks (4x1 runs faster in TFLite's Dense); none: unstructured",
    )
    p.add_argument(
        "--channel-sparsity", type=float, default=0.0,
        help="fraction of the removable channels removed during training (0.3-0.5: a slimmed model "
        "that runs faster); also writes model_slim.keras and model_slim.tflite",
    )
    p.add_argument(
        "--min-channels", type=float, default=0.2,
        help="per layer, the fraction of the channels the schedule would leave it that it keeps at least; "
        "1.0: every layer loses the same fraction (the fastest slimmed model)",
    )
    p.add_argument(
        "--channel-begin", type=float, default=None,
        help="fraction of training before channels start to go (None: from the first mask update)",
    )
    p.add_argument(
        "--channel-end", type=float, default=None,
        help="fraction of training by which the channels reach --channel-sparsity (e.g. 0.25 with --shrink)",
    )
    p.add_argument(
        "--shrink", action="store_true",
        help="rebuild the model without its removed channels during training (needs --channel-sparsity): "
        "training gets cheaper; no backup/resume of the run (docs/shrinking.md)",
    )
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of the model (1.0: the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, masks and data order")
    p.add_argument("--data", help=defaults["data_help"])
    p.add_argument("--out", default=defaults["out"], help="folder for logs, plots, .keras and .tflite")
    p.add_argument("--smoke", action="store_true", help="a few steps of the same model at width 1/8 (CI)")
    runtime.add_arguments(p)
    return p


def learning_rate(text):
    """`--lr`: a number, or "auto" (None: the example's own rule)."""
    return None if str(text).lower() == "auto" else float(text)


def block_size(text):
    """`--block-size`: "4x1" -> (4, 1); "none" -> None."""
    if text is None or text.lower() == "none":
        return None
    try:
        rows, cols = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IxO (e.g. 4x1) or none, got {text!r}") from None
    return (rows, cols)


def require(module, extra="examples"):
    """Imports `module`, or exits naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SystemExit(
            f"This example needs `{module}` ({error}). Install it with "
            f"`pip install \"keras-dstee[{extra}]\"` (or `pip install -e \".[{extra}]\"` "
            "from a checkout)."
        ) from None


def online(host="storage.googleapis.com", port=443, timeout=3.0):
    """Whether the data hosts answer: checked first so an offline run fails
    in seconds instead of hanging in a download."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_online(what, flag_help):
    if not online():
        raise SystemExit(
            f"No network, so {what} cannot be downloaded. Pass --data with a local copy: {flag_help}"
        )


def load_npz(path):
    """`x_train, y_train, x_test, y_test` from an .npz (the layout of
    ../shared/data/cifar10.npz: uint8 images, integer labels)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--data: no such file: {path}")
    data = np.load(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
    if missing:
        raise SystemExit(f"--data: {path} lacks arrays {sorted(missing)}")
    return (data["x_train"], data["y_train"].reshape(-1)), (data["x_test"], data["y_test"].reshape(-1))


def cifar_statistics(x_train):
    """Per-channel mean and std of uint8 training images, on the 0-1 scale:
    the CIFAR examples' standardisation (`deploy.py` repeats it)."""
    pixels = x_train.reshape(-1, 3)
    return pixels.mean(axis=0) / 255.0, pixels.std(axis=0) / 255.0


def cifar_datasets(train, test, batch_size, seed, epochs, start_epoch=0, steps=None, replicas=1):
    """tf.data pipelines with the CIFAR augmentation: 4-pixel zero padding,
    random 32x32 crop, horizontal flip; per-channel standardisation.

    Epoch `e`'s order and augmentation depend only on `(seed, e)`
    (stateless random ops), and the training pipeline starts at
    `start_epoch`, so a resumed run sees the batches an uninterrupted one
    would. `steps`: batches per epoch (default: all full batches). Over
    several `replicas` the test pipeline drops its last partial batch, as
    the training one does: a batch smaller than the replica count leaves a
    replica empty, which `MirroredStrategy` cannot sum.
    """
    tf = require("tensorflow")

    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = cifar_statistics(x_train)
    steps = steps or len(x_train) // batch_size
    x_all, y_all = tf.constant(x_train), tf.constant(y_train)

    def normalise(x, y):
        return (tf.cast(x, "float32") / 255.0 - mean) / std, tf.cast(y, "int32")

    def augment(epoch, index):
        key = tf.stack([tf.cast(seed, "int64") * 1_000_003 + epoch, index])
        x = tf.pad(tf.gather(x_all, index), [[4, 4], [4, 4], [0, 0]])
        x = tf.image.stateless_random_crop(x, (32, 32, 3), seed=key)
        return tf.image.stateless_random_flip_left_right(x, seed=key + 1), tf.gather(y_all, index)

    def epoch_data(epoch):
        key = tf.stack([tf.cast(seed, "int64"), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(len(x_train), dtype="int64"), seed=key)
        return (
            tf.data.Dataset.from_tensor_slices(order)
            .map(lambda i: augment(epoch, i), num_parallel_calls=tf.data.AUTOTUNE)
            .map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .take(steps)
        )

    train_ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_data).prefetch(tf.data.AUTOTUNE)
    test_ds = (
        tf.data.Dataset.from_tensor_slices((x_test, y_test))
        .batch(batch_size, drop_remainder=replicas > 1)
        .map(normalise)
    )
    return train_ds, test_ds, steps


def make_callback(args):
    if args.method == "dense":
        return None
    return keras_dstee.SparseTraining(
        args.method,
        sparsity=args.sparsity,
        seed=args.seed,
        update_freq=args.update_freq,
        block_size=args.block_size,
        channel_sparsity=args.channel_sparsity,
        min_channels=args.min_channels,
        channel_begin=args.channel_begin,
        channel_end=args.channel_end,
        shrink=args.shrink,
    )


class SparsityLogger(keras.callbacks.Callback):
    """Adds `sparsity`/`coverage` = 0/1 for dense runs, so every CSV has them."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.setdefault("sparsity", 0.0)
            logs.setdefault("coverage", 1.0)


def train_and_report(model, args, train_ds, test_ds, optimizer, loss, input_shape, steps, scope):
    """Trains with the chosen method (`steps` per epoch, compiled in
    `scope`), then writes everything to `args.out`: `log.csv`,
    `tensorboard/`, `summary.txt`, `model.keras`, `model.tflite`,
    `curves.png` and `results.json`. Rerunning the same command after a kill
    continues from the last finished epoch (`backup/`)."""
    os.makedirs(args.out, exist_ok=True)
    with scope():
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    sparse = make_callback(args)
    resuming = runtime.resumed_epoch(args.out) > 0
    callbacks = ([sparse] if sparse else []) + [SparsityLogger()]
    callbacks += runtime.callbacks(args.out, args.batch_size, steps, resuming, backup=not args.shrink)
    start = time.time()
    history = model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=args.epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=2 if args.smoke else 1,
        shuffle=False,  # the pipelines shuffle each epoch themselves
        **({"validation_steps": 1} if args.smoke else {}),
    )
    train_seconds = time.time() - start
    print(f"Training took {train_seconds:.1f} s" + (f" with {len(sparse.rebuilds)} rebuild(s) (--shrink)" if args.shrink and sparse else "")
          + "; the same command with --method dense gives the dense run's time.")
    evaluate_steps = {"steps": 1} if args.smoke else {}
    recalibrated = {}
    if sparse and args.channel_sparsity > 0:
        # The layers after removed channels keep part of their old inputs'
        # BatchNormalization statistics (docs/channels.md): re-estimate them.
        _, stale = model.evaluate(test_ds, verbose=0, **evaluate_steps)
        keras_dstee.recalibrate_batch_norm(model, train_ds, batch_size=args.batch_size)
        recalibrated = {"test_accuracy_stale_bn": float(stale)}
    _, accuracy = model.evaluate(test_ds, verbose=0, **evaluate_steps)

    lines = []
    report = keras_dstee.summary(model, input_shape=input_shape, print_fn=lines.append)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    keras_dstee.strip(model)
    model.save(os.path.join(args.out, "model.keras"))
    print("Exporting the sparse TFLite file ...", flush=True)
    # With blocks, the export says which layers run on a sparse kernel.
    optimize_for = "latency" if sparse and args.block_size else "size"
    tflite = keras_dstee.export_tflite(model, os.path.join(args.out, "model.tflite"), optimize_for=optimize_for)
    for row in tflite.get("layers", []):
        print(f"  {row['path']}: {row['op']}, {row['storage']}")
    slimmed = export_slimmed(model, args, tflite) if sparse and args.channel_sparsity > 0 else {}
    target = args.sparsity if sparse else 0.0
    plot_curves(history.history, os.path.join(args.out, "curves.png"), f"{model.name}: {args.method}, sparsity {target:g}", target)
    results = {
        "backend": keras.backend.backend(),
        "method": args.method,
        "sparsity": args.sparsity if sparse else 0.0,
        "epochs": args.epochs,
        "test_accuracy": float(accuracy),
        "kernel_sparsity": report["total"]["sparsity"],
        "flops_ratio": report["total"]["flops_sparse"] / max(report["total"]["flops_dense"], 1),
        "coverage": history.history["coverage"][-1],
        "tflite_bytes": tflite["bytes"],
        "tflite_dense_bytes": tflite["dense_bytes"],
        "tflite_accelerated_layers": tflite.get("accelerated"),
        "train_seconds": train_seconds,
        "images_per_second": history.history.get("images_per_second", [None])[-1],
        "devices": args.devices,
        "dtype_policy": args.dtype_policy,
        "channel_sparsity": args.channel_sparsity,
        "min_channels": args.min_channels,
        "channel_begin": args.channel_begin,
        "channel_end": args.channel_end,
        "shrink": args.shrink,
        "rebuilds": getattr(sparse, "rebuilds", []),
        "live_channels": history.history.get("live_channels", [None])[-1],
        **recalibrated,
        **slimmed,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    return results


def export_slimmed(model, args, tflite):
    """Writes the slimmed model (removed channels cut out) and its TFLite
    file; returns their sizes for `results.json`."""
    slimmed = keras_dstee.slim(model)
    slimmed.save(os.path.join(args.out, "model_slim.keras"))
    path = os.path.join(args.out, "model_slim.tflite")
    slim_tflite = keras_dstee.export_tflite(model, path, slim=True)
    print(
        f"Slimmed: {slimmed.count_params():,} parameters (from {model.count_params():,}); "
        f"model_slim.tflite {slim_tflite['bytes']:,} bytes (sparse file {tflite['bytes']:,})"
    )
    return {
        "slim_params": slimmed.count_params(),
        "params": model.count_params(),
        "slim_tflite_bytes": slim_tflite["bytes"],
    }


def plot_curves(history, path, title, target):
    """Accuracy, sparsity and coverage against epochs, in one PNG; `target`
    (the sparsity asked for) is marked on the sparsity axis."""
    require("matplotlib").use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("accuracy", "train"), ("val_accuracy", "test")):
        if key in history:
            axes[0].plot(epochs, history[key], marker="o", label=label)
    axes[0].set_title("accuracy")
    axes[0].legend()
    axes[1].plot(epochs, history["sparsity"], marker="o", label="sparsity (masks)")
    if "zero_fraction" in history:
        axes[1].plot(epochs, history["zero_fraction"], marker=".", linestyle=":", label="zero weights")
    axes[1].axhline(target, color="gray", linestyle="--", label=f"target {target:g}")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("sparsity")
    axes[1].legend(loc="lower right")
    axes[2].plot(epochs, history["coverage"], marker="o")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title("coverage (positions ever active)")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
