"""ResNet-50 for CIFAR (3x3 stem, no max-pool) and for ImageNet."""

import keras
from keras import layers

# (width, blocks, stride) of the four bottleneck stages.
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _channels(channels, width):
    return max(1, round(channels * width))


def _bottleneck(x, width, stride, name, use_bias=False, stride_first=False):
    """One bottleneck block; `stride_first` strides the first 1x1 conv
    (ResNet v1, as `keras.applications`), else the 3x3 conv."""
    out_width = 4 * width
    conv = lambda filters, size, strides, suffix: layers.Conv2D(  # noqa: E731
        filters, size, strides=strides, padding="same", use_bias=use_bias, name=f"{name}_{suffix}"
    )
    shortcut = x
    if stride != 1 or x.shape[-1] != out_width:
        shortcut = conv(out_width, 1, stride, "proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = conv(width, 1, stride if stride_first else 1, "conv1")(x)
    y = layers.ReLU()(layers.BatchNormalization(name=f"{name}_bn1")(y))
    y = conv(width, 3, 1 if stride_first else stride, "conv2")(y)
    y = layers.ReLU()(layers.BatchNormalization(name=f"{name}_bn2")(y))
    y = conv(out_width, 1, 1, "conv3")(y)
    y = layers.BatchNormalization(name=f"{name}_bn3")(y)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _stages(x, width, **block_args):
    for stage, (channels, blocks, stride) in enumerate(STAGES, start=1):
        for block in range(blocks):
            x = _bottleneck(
                x,
                _channels(channels, width),
                stride if block == 0 else 1,
                f"stage{stage}_block{block + 1}",
                **block_args,
            )
    return x


def resnet50_cifar(num_classes=10, input_shape=(32, 32, 3), width=1.0, name="resnet50_cifar"):
    """ResNet-50 for 32x32 images, as in the CIFAR sparse-training papers.

    A 3x3 stride-1 stem of 64 channels and no max-pool, then bottleneck
    stages of 3, 4, 6 and 3 blocks (widths 64-512, expansion 4, strides
    1/2/2/2 on the 3x3 conv), global average pooling and a dense classifier.
    Convolutions have no bias; every one is followed by batch norm. This is
    the layout of the widely used `kuangliu/pytorch-cifar` ResNet50 that the
    RigL/ITOP/DST-EE CIFAR experiments follow: 23,520,842 trainable
    parameters for 10 classes.

    Args:
        num_classes: number of output logits.
        input_shape: one image's shape, channels last.
        width: multiplies every conv's channel count (e.g. 0.125 for a quick
            run of the same architecture); 1.0 is the paper's network.
        name: the model's name.
    """
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(_channels(64, width), 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(x))
    x = _stages(x, width)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet50_imagenet(num_classes=1000, input_shape=(224, 224, 3), width=1.0, name="resnet50"):
    """ResNet-50 v1 for ImageNet, untrained, with the layers and parameter
    count of `keras.applications.ResNet50` (25,636,712 for 1000 classes):
    a 7x7 stride-2 stem and 3x3 stride-2 max-pool, bottleneck stages with
    biased convs striding their first 1x1 conv, global average pooling and a
    dense classifier.

    Returns logits (no softmax), so pair it with `from_logits=True` losses.

    Args:
        num_classes: number of output logits.
        input_shape: one image's shape, channels last.
        width: multiplies every conv's channel count; 1.0 is ResNet-50.
        name: the model's name.
    """
    inputs = keras.Input(input_shape)
    x = layers.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = layers.Conv2D(_channels(64, width), 7, strides=2, name="stem_conv")(x)
    x = layers.ReLU()(layers.BatchNormalization(epsilon=1.001e-5, name="stem_bn")(x))
    x = layers.ZeroPadding2D(1, name="pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    x = _stages(x, width, use_bias=True, stride_first=True)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)
