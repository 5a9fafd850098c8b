"""The seed paper's models: published parameter counts, summary, sparse training."""

import math

import keras
import numpy as np
import pytest

import keras_dstee
from keras_dstee import models


def _trainable(model):
    return sum(math.prod(v.shape) for v in model.trainable_variables)


# References: ResNet-50 CIFAR as kuangliu/pytorch-cifar's ResNet50 (23,520,842
# trainable parameters, 10 classes); VGG-19-BN CIFAR: 16 bias-free 3x3 convs
# (20,018,880) + 2 x 5,504 BN parameters + the 512-wide classifier; ResNet-50
# ImageNet: the Keras Applications table (25,636,712 parameters in total).
@pytest.mark.parametrize(
    "build, trainable, total",
    [
        (lambda: models.resnet50_cifar(10), 23_520_842, None),
        (lambda: models.vgg19_cifar(10), 20_018_880 + 11_008 + 5_130, None),
        (lambda: models.vgg19_cifar(100), 20_018_880 + 11_008 + 51_300, None),
        (lambda: models.resnet50_imagenet(), None, 25_636_712),
        # 3072-1024-1024-1024-10 with biases.
        (lambda: models.mlp_cifar(10), 3072 * 1024 + 2 * 1024 * 1024 + 3 * 1024 + 1024 * 10 + 10, None),
    ],
    ids=["resnet50_cifar", "vgg19_cifar10", "vgg19_cifar100", "resnet50_imagenet", "mlp_cifar"],
)
def test_parameter_counts(build, trainable, total):
    model = build()
    if trainable is not None:
        assert _trainable(model) == trainable
    if total is not None:
        assert model.count_params() == total


@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_resnet50_cifar_erk_summary(sparsity):
    model = models.resnet50_cifar()
    densities = keras_dstee.layer_densities(model, sparsity)
    kernels = {v.path: v for v in model.trainable_variables}
    stem = densities["stem_conv/kernel"]
    classifier = densities["classifier/kernel"]
    three_by_three = [d for p, d in densities.items() if tuple(kernels[p].shape[:2]) == (3, 3) and p != "stem_conv/kernel"]
    assert stem > max(three_by_three) and classifier > max(three_by_three)
    total = sum(d * math.prod(kernels[p].shape) for p, d in densities.items())
    size = sum(math.prod(kernels[p].shape) for p in densities)
    assert total / size == pytest.approx(1 - sparsity, rel=1e-6)
    report = keras_dstee.summary(model, print_fn=lambda line: None)
    assert report["total"]["flops_dense"] == pytest.approx(1.30e9, rel=0.02)


def test_summary_flops_by_hand():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10, 10, 3)), keras.layers.Conv2D(8, 3, strides=2, padding="same"),
         keras.layers.DepthwiseConv2D(3), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    report = keras_dstee.summary(model, print_fn=lambda line: None)
    conv, depthwise, dense = report["kernels"]
    assert conv["flops_dense"] == 5 * 5 * (3 * 3 * 3) * 8  # 5x5 outputs
    assert depthwise["flops_dense"] == 3 * 3 * (3 * 3) * 8  # 3x3 outputs, 8 channels
    assert dense["flops_dense"] == 72 * 4
    kernel = model.layers[0].kernel
    kernel.assign(np.where(np.arange(216).reshape(3, 3, 3, 8) % 4 == 0, 1.0, 0.0))
    conv = keras_dstee.summary(model, print_fn=lambda line: None)["kernels"][0]
    assert conv["nonzeros"] == 54 and conv["density"] == 0.25
    assert conv["flops_sparse"] == conv["flops_dense"] // 4


def test_vgg19_cifar_trains_sparse():
    model = models.vgg19_cifar(10)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 32, 32, 3)).astype("float32"), rng.integers(0, 10, size=8)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[keras_dstee.DSTEE(sparsity=0.98, update_freq=1, seed=0)])
    report = keras_dstee.summary(model, print_fn=lambda line: None)
    assert report["total"]["density"] == pytest.approx(0.02, abs=1e-4)
    assert report["total"]["nonzeros"] <= report["total"]["active"]
