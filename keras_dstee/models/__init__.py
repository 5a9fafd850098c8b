"""The seed paper's architectures, backend-agnostic Keras models."""

from keras_dstee.models.resnet import resnet50_cifar
from keras_dstee.models.resnet import resnet50_imagenet
from keras_dstee.models.vgg import vgg19_cifar

__all__ = ["resnet50_cifar", "resnet50_imagenet", "vgg19_cifar"]
