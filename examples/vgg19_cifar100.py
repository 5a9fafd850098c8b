"""VGG-19 (batch norm) on CIFAR-100, sparse from scratch.

    KERAS_BACKEND=jax python examples/vgg19_cifar100.py --data cifar100.npz
    python examples/vgg19_cifar100.py --method dstee --sparsity 0.95

Model: `keras_dstee.models.vgg19_cifar` (16 bias-free 3x3 convs with batch
norm, one dense classifier). Recipe and its sources: see `cifar.py`. Without
--data the data come from tensorflow-datasets' `cifar100` when it is prepared
locally (`TFDS_DATA_DIR`), else `keras.datasets.cifar100` (needs the network); any
.npz in the layout of ../shared/data/cifar10.npz works (the smoke test uses
that CIFAR-10 file: its 10 labels fit the 100-way head).
"""

from cifar import run

from keras_dstee import models

if __name__ == "__main__":
    run(__doc__.splitlines()[0], "cifar100", 100, models.vgg19_cifar, None)
