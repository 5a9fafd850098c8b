"""ResNet-50 for CIFAR (3x3 stem, no max-pool) and for ImageNet."""

import keras
from keras import layers

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _bottleneck(x, width, stride, name):
    out_width = 4 * width
    shortcut = x
    if stride != 1 or x.shape[-1] != out_width:
        shortcut = layers.Conv2D(out_width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_conv1")(x)
    y = layers.ReLU()(layers.BatchNormalization(name=f"{name}_bn1")(y))
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.ReLU()(layers.BatchNormalization(name=f"{name}_bn2")(y))
    y = layers.Conv2D(out_width, 1, use_bias=False, name=f"{name}_conv3")(y)
    y = layers.BatchNormalization(name=f"{name}_bn3")(y)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet50_cifar(num_classes=10, input_shape=(32, 32, 3), name="resnet50_cifar"):
    """ResNet-50 for 32x32 images, as in the CIFAR sparse-training papers.

    A 3x3 stride-1 stem of 64 channels and no max-pool, then bottleneck
    stages of 3, 4, 6 and 3 blocks (widths 64-512, expansion 4, strides
    1/2/2/2 on the 3x3 conv), global average pooling and a dense classifier.
    Convolutions have no bias; every one is followed by batch norm. This is
    the layout of the widely used `kuangliu/pytorch-cifar` ResNet50 that the
    RigL/ITOP/DST-EE CIFAR experiments follow: 23,520,842 trainable
    parameters for 10 classes.
    """
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(x))
    for stage, (width, blocks, stride) in enumerate(STAGES, start=1):
        for block in range(blocks):
            x = _bottleneck(x, width, stride if block == 0 else 1, f"stage{stage}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet50_imagenet(num_classes=1000, input_shape=(224, 224, 3), name="resnet50"):
    """ResNet-50 v1 for ImageNet: `keras.applications.ResNet50`, untrained.

    Returns logits (no softmax), so pair it with
    `from_logits=True` losses. 25,636,712 parameters for 1000 classes (the
    Keras Applications table).
    """
    return keras.applications.ResNet50(
        weights=None,
        input_shape=input_shape,
        classes=num_classes,
        classifier_activation=None,
        name=name,
    )
