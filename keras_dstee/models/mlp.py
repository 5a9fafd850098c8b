"""An MLP for 32x32 images: the Dense-heavy model where block sparsity pays
at inference."""

import keras
from keras import layers


def mlp_cifar(num_classes=10, input_shape=(32, 32, 3), hidden=(1024, 1024, 1024), width=1.0, name="mlp_cifar"):
    """A multilayer perceptron on the flattened image.

    Every multiply-add is in a `Dense` layer, one input row at a time at
    batch 1: the case TFLite's sparse FullyConnected kernel speeds up when
    trained with `block_size=(4, 1)`. Defaults: 3072-1024-1024-1024-10 with
    ReLU, 5.26M parameters.

    Args:
        num_classes: number of output logits.
        input_shape: one image's shape.
        hidden: units of the hidden layers.
        width: multiplies every hidden layer's units (rounded to a multiple
            of 4, so `(4, 1)` blocks divide the next layer's input).
        name: the model's name.
    """
    inputs = keras.Input(input_shape)
    x = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden):
        x = layers.Dense(max(4, round(units * width / 4) * 4), activation="relu", name=f"fc{i}")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)
