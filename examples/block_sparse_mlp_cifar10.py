"""A block-sparse MLP on CIFAR-10 whose TFLite file runs faster than dense.

    python examples/block_sparse_mlp_cifar10.py --data ../shared/data/cifar10.npz
    KERAS_BACKEND=jax python examples/block_sparse_mlp_cifar10.py --data ../shared/data/cifar10.npz --sparsity 0.98

Model: `keras_dstee.models.mlp_cifar` (3072-1024-1024-1024-10), trained with
DST-EE at `--block-size 4x1`: weights are dropped and grown in blocks of 4
inputs of one output unit, the 1x4 pattern of TFLite's `(output, input)`
weight layout that its sparse FullyConnected kernel runs. The export
(`export_tflite(..., optimize_for="latency")`) prints, per layer, whether it
runs on that kernel; `benchmarks/inference_latency.py` measures the speed.
Recipe (ours, for CPU budgets): AdamW, learning rate 2e-3 with cosine
decay, weight decay 0.05, batch 128, 20 epochs, random 32x32 crops of
4-pixel-padded images and horizontal flips (the CIFAR augmentation of
`cifar.py`). Without --data, CIFAR-10 is downloaded (needs the network).
"""

import os

import keras
from cifar import data_help
from cifar import load_cifar
from common import cifar_datasets
from common import parser
from common import train_and_report
from runtime import configure
from runtime import resumed_epoch

from keras_dstee import models

DEFAULTS = {
    "epochs": 20,
    "batch_size": 128,
    "lr": 2e-3,
    "out": None,
    "block_size": (4, 1),
    "data_help": data_help("cifar10"),
}


def main():
    args = parser(__doc__.splitlines()[0], DEFAULTS).parse_args()
    scope = configure(args)
    keras.utils.set_random_seed(args.seed)
    train, test = load_cifar("cifar10", args.data)
    if args.smoke:
        train, test = (train[0][:256], train[1][:256]), (test[0][:500], test[1][:500])
        args.epochs, args.batch_size, args.update_freq = min(args.epochs, 2), min(args.batch_size, 32), 1
        args.width = min(args.width, 0.125)
    block = "x".join(map(str, args.block_size)) if args.block_size else "unstructured"
    args.out = args.out or os.path.join("runs", f"mlp_cifar10_{args.method}_{args.sparsity}_{block}")
    train_ds, test_ds, steps = cifar_datasets(
        train, test, args.batch_size, args.seed, args.epochs, resumed_epoch(args.out), 2 if args.smoke else None,
        args.devices,
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with scope():
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps * args.epochs)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.05)
        model = models.mlp_cifar(10, width=args.width)
    return train_and_report(model, args, train_ds, test_ds, optimizer, loss, None, steps, scope)


if __name__ == "__main__":
    main()
