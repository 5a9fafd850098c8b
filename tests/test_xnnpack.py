"""`xnnpack_sparse_check`: XNNPACK's structure rules for sparse conv
inference (tfmot's `PruneForLatencyOnXNNPack`), in Keras terms."""

import keras
import numpy as np

import keras_dstee

L = keras.layers


def mobilenet_like(middle=None):
    inputs = keras.Input((32, 32, 3))
    x = L.ZeroPadding2D(1)(inputs)
    x = L.Conv2D(16, 3, strides=2)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.Conv2D(16, 1, name="expand")(y)
    x = L.Add()([x, L.ReLU()(y)])
    x = L.Conv2D(32, 1, name="project")(x)
    if middle is not None:
        x = middle(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(x)))


def test_mobilenet_style_graph_is_eligible():
    model = mobilenet_like()
    report = keras_dstee.xnnpack_sparse_check(model)
    assert report["eligible"] and report["problems"] == []
    assert sorted(report["sparse_layers"]) == ["expand", "project"]
    assert report["zero_fraction_1x1"] == 0.0
    for name in ("expand", "project"):
        layer = model.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        kernel[:, :, : kernel.shape[2] * 3 // 4] = 0
        layer.kernel.assign(kernel)
    assert keras_dstee.xnnpack_sparse_check(model)["zero_fraction_1x1"] == 0.75


def test_unsupported_layers_are_named():
    report = keras_dstee.xnnpack_sparse_check(mobilenet_like(L.Conv2D(32, 3, padding="same", name="full_conv")))
    assert not report["eligible"]
    assert report["problems"] == ["full_conv: a Conv2D that is not 1x1, stride 1, undilated"]
    assert report["sparse_layers"] == []


def test_plain_cnn_lacks_stem_and_pooling():
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3), L.Flatten(), L.Dense(4)])
    report = keras_dstee.xnnpack_sparse_check(model)
    assert not report["eligible"]
    assert any("stem" in p for p in report["problems"])
    assert any("GlobalAveragePooling2D" in p for p in report["problems"])
    assert isinstance(report["this_machine"], str) and np.isfinite(report["zero_fraction_1x1"])


def test_keras_mobilenet_v2_is_named_as_not_eligible_and_why():
    """The README says `keras.applications.MobileNetV2` as built does not
    qualify: its 'same'-padded stem and its head pooled without keepdims."""
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    report = keras_dstee.xnnpack_sparse_check(model)
    assert not report["eligible"]
    assert len(report["problems"]) == 2
    assert "3x3 stride-2 'valid' Conv2D" in report["problems"][0] and "ZeroPadding2D(1)" in report["problems"][0]
    assert "GlobalAveragePooling2D(keepdims=True)" in report["problems"][1]
