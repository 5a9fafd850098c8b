"""The CIFAR recipe shared by `resnet50_cifar10.py` and `vgg19_cifar100.py`.

Defaults follow the recipe of the CIFAR experiments in the sparse-training
papers DST-EE builds on (GraSP, Wang et al. 2020; ITOP, Liu et al. 2021;
DST-EE, Huang et al. 2023): SGD with momentum 0.9 (Nesterov), learning rate
0.1, weight decay 5e-4, batch size 128, 160 epochs, the learning rate divided
by 10 at 50% and 75% of training, and random 32x32 crops of 4-pixel-padded
images with horizontal flips. Keras's SGD applies weight decay decoupled
(`w -= lr * wd * w`), close to PyTorch's coupled L2 for SGD.
"""

import os

import keras
from common import cifar_datasets
from common import load_npz
from common import parser
from common import require
from common import require_online
from common import train_and_report
from runtime import configure
from runtime import resumed_epoch

DEFAULTS = {
    "epochs": 160,
    "batch_size": 128,
    "lr": 0.1,
    "out": None,
}


def data_help(name):
    return (
        f"an .npz with x_train, y_train, x_test, y_test of {name} (uint8 images, integer labels); "
        f"`python examples/prepare_cifar.py {name}` writes one"
    )


def load_cifar(name, data):
    """(train, test) arrays: from `data` (.npz); else from tensorflow-datasets
    when `name` is prepared in its local data folder (`TFDS_DATA_DIR`, default
    ~/tensorflow_datasets); else, online, from keras.datasets."""
    if data:
        return load_npz(data)
    local = _tfds_local(name)
    if local is not None:
        return local
    require_online(name, data_help(name))
    loader = {"cifar10": keras.datasets.cifar10, "cifar100": keras.datasets.cifar100}[name]
    return loader.load_data()


def _tfds_local(name):
    """CIFAR from a locally prepared tfds folder, or None. Checked on disk
    first: tfds may otherwise reach for the network."""
    folder = os.path.join(os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")), name)
    if not os.path.isdir(folder):
        return None
    tfds = require("tensorflow_datasets")
    train, test = tfds.as_numpy(
        tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True, download=False)
    )
    return (train[0], train[1].reshape(-1)), (test[0], test[1].reshape(-1))


def run(description, dataset, num_classes, build_model, out):
    args = parser(description, dict(DEFAULTS, out=out, data_help=data_help(dataset))).parse_args()
    scope = configure(args)
    keras.utils.set_random_seed(args.seed)
    train, test = load_cifar(dataset, args.data)
    if args.smoke:
        train = (train[0][:256], train[1][:256])
        test = (test[0][:500], test[1][:500])
        args.epochs = min(args.epochs, 2)
        args.batch_size = min(args.batch_size, 32)
        args.update_freq = 1
        args.width = min(args.width, 0.125)
    if train[1].max() >= num_classes:
        raise SystemExit(f"--data has labels up to {train[1].max()}, but the model has {num_classes} classes")
    args.out = args.out or os.path.join("runs", f"{dataset}_{args.method}_{args.sparsity}")
    train_ds, test_ds, steps = cifar_datasets(
        train, test, args.batch_size, args.seed, args.epochs, resumed_epoch(args.out), 2 if args.smoke else None,
        args.devices,
    )
    total = steps * args.epochs
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(0.5 * total), int(0.75 * total)], [args.lr, args.lr * 0.1, args.lr * 0.01]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with scope():
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=5e-4)
        model = build_model(num_classes, width=args.width)
    return train_and_report(model, args, train_ds, test_ds, optimizer, loss, None, steps, scope)
