"""VGG-19 with batch normalisation, for 32x32 CIFAR images."""

import keras
from keras import layers

# 16 conv layers; "M" is a 2x2 max-pool.
VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512]


def vgg19_cifar(
    num_classes=100, input_shape=(32, 32, 3), weight_decay=None, width=1.0, name="vgg19_cifar"
):
    """VGG-19-BN as used for CIFAR by the sparse-training literature.

    Sixteen 3x3 convolutions without bias, each followed by batch norm and
    ReLU, max-pooling between stages, a final 2x2 average pool and one dense
    classifier (the GraSP / ITOP / DST-EE CIFAR VGG-19: 20.04M parameters for
    10 classes, 20.08M for 100, trainable).

    Args:
        num_classes: number of output logits.
        input_shape: one image's shape, channels last.
        weight_decay: optional L2 factor added to every kernel's loss. The
            examples use the optimizer's decoupled `weight_decay` instead.
        width: multiplies every conv's channel count (e.g. 0.125 for a quick
            run of the same architecture); 1.0 is the paper's network.
        name: the model's name.
    """
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(input_shape)
    x = inputs
    for i, channels in enumerate(VGG19):
        if channels == "M":
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
            continue
        x = layers.Conv2D(max(1, round(channels * width)), 3, padding="same", use_bias=False,
                          kernel_regularizer=regularizer, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.AveragePooling2D(2, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=regularizer, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)
