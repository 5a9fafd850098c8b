"""The seed paper's architectures, and a Dense-heavy model for block
sparsity (`mlp_cifar`), as backend-agnostic Keras models."""

from keras_dstee.models.mlp import mlp_cifar
from keras_dstee.models.resnet import resnet50_cifar
from keras_dstee.models.resnet import resnet50_imagenet
from keras_dstee.models.vgg import vgg19_cifar

__all__ = ["mlp_cifar", "resnet50_cifar", "resnet50_imagenet", "vgg19_cifar"]
