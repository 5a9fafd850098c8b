"""ResNet-50 on CIFAR-10, sparse from scratch (DST-EE, RigL, SET, static, dense).

    KERAS_BACKEND=jax python examples/resnet50_cifar10.py --data ../shared/data/cifar10.npz
    python examples/resnet50_cifar10.py --method rigl --sparsity 0.98 --epochs 160

Model: `keras_dstee.models.resnet50_cifar` (3x3 stem, no max-pool, bottleneck
blocks 3-4-6-3). Recipe and its sources: see `cifar.py`. Without --data the
data come from `keras.datasets.cifar10` (needs the network).
"""

from cifar import run

from keras_dstee import models

if __name__ == "__main__":
    run(__doc__.splitlines()[0], "cifar10", 10, models.resnet50_cifar, None)
