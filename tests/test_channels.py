"""`channel_groups`: which output channels can be removed together, on
VGG-, ResNet-, DenseNet- and MobileNetV2-style graphs, Flatten then Dense,
nested models, the seed's models, and the cases that are not removable."""

import keras
import numpy as np
import pytest
from helpers import to_numpy

import keras_dstee

L = keras.layers


def vgg_style():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(6, 3, padding="same", name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(5, 3, padding="same", name="conv2"),
            L.ReLU(),
            L.Flatten(),
            L.Dense(4, name="head"),
        ]
    )


def resnet_style():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    stem = L.ReLU()(L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    y = L.ReLU()(L.Conv2D(4, 1, name="conv1")(stem))
    y = L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name="conv2")(y))
    x = L.ReLU()(L.Add()([stem, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def densenet_style():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(3, 3, padding="same", name="b")(L.ReLU()(a))
    x = L.Concatenate()([a, b])
    x = L.Conv2D(5, 1, name="transition")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))


def mobilenet_v2_style():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    x = L.ReLU(6.0)(L.BatchNormalization(name="bn_expand")(L.Conv2D(12, 1, name="expand")(inputs)))
    x = L.ReLU(6.0)(L.BatchNormalization(name="bn_dw")(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = L.BatchNormalization(name="bn_project")(L.Conv2D(4, 1, name="project")(x))
    x = L.Add()([inputs, x])  # the residual joins the model's input: not removable
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))


def _group(groups, layer):
    (group,) = [g for g in groups if layer in g.layers]
    return group


def _by_layer(slices, layer, variable="kernel"):
    (found,) = [s for s in slices if s.layer == layer and s.variable.name == variable]
    return found


def _set_slices(slices, channel, value=0.0):
    for s in slices:
        weight = to_numpy(s.variable).copy()
        index = [slice(None)] * weight.ndim
        index[s.axis] = s.positions[channel]
        weight[tuple(index)] = value
        s.variable.assign(weight)


def _removing_changes_nothing_downstream(model, group, channel, input_shape):
    """With the channel's producer and follower slices at 0 its output is
    exactly 0, so zeroing its consumer slices too leaves the output as it is:
    the consumer slices are exactly what reads the channel."""
    x = np.random.default_rng(1).normal(size=(2, *input_shape)).astype("float32")
    before = to_numpy(model(x, training=False))
    _set_slices(group.producers + group.followers, channel)
    silenced = to_numpy(model(x, training=False))
    _set_slices(group.consumers, channel, value=123.0)  # what it reads is 0
    np.testing.assert_array_equal(to_numpy(model(x, training=False)), silenced)
    assert not np.allclose(before, silenced)  # the channel mattered


def test_vgg_style_with_flatten_then_dense():
    model = vgg_style()
    groups = keras_dstee.channel_groups(model)
    assert [g.layers for g in groups] == [["conv1"], ["conv2"], ["head"]]
    conv1, conv2, head = groups
    assert conv1.removable and conv2.removable and not head.removable
    assert "output" in head.reason
    assert conv1.size == 6 and conv2.size == 5
    assert sorted({s.layer for s in conv1.followers}) == ["bn1"]
    assert len(conv1.followers) == 4  # gamma, beta, moving mean and variance
    # Flatten: channel c of conv2 is every 5th row of the head, from c.
    rows = _by_layer(conv2.consumers, "head").positions
    np.testing.assert_array_equal(rows[2], np.arange(2, 4 * 4 * 5, 5))
    _removing_changes_nothing_downstream(model, conv2, 2, (8, 8, 3))
    _removing_changes_nothing_downstream(model, conv1, 4, (8, 8, 3))


def test_resnet_style_add_couples_the_stream():
    model = resnet_style()
    groups = keras_dstee.channel_groups(model)
    stream = _group(groups, "stem")
    assert stream.layers == ["conv2", "stem"] and stream.size == 8 and stream.removable
    assert {s.layer for s in stream.consumers} == {"conv1", "head"}
    assert {s.layer for s in stream.followers} == {"stem_bn", "bn2"}
    inner = _group(groups, "conv1")
    assert inner.size == 4 and inner.removable and [s.layer for s in inner.consumers] == ["conv2"]
    _removing_changes_nothing_downstream(model, stream, 3, (8, 8, 3))
    _removing_changes_nothing_downstream(model, inner, 1, (8, 8, 3))


def test_densenet_style_concatenate_maps_with_offsets():
    model = densenet_style()
    groups = keras_dstee.channel_groups(model)
    a, b = _group(groups, "a"), _group(groups, "b")
    assert a.size == 4 and b.size == 3 and a.removable and b.removable
    np.testing.assert_array_equal(_by_layer(b.consumers, "transition").positions[1], [4 + 1])
    assert {s.layer for s in a.consumers} == {"b", "transition"}
    _removing_changes_nothing_downstream(model, b, 1, (8, 8, 3))
    _removing_changes_nothing_downstream(model, a, 2, (8, 8, 3))


def test_mobilenet_v2_style_depthwise_follows_its_channel():
    model = mobilenet_v2_style()
    groups = keras_dstee.channel_groups(model)
    expand = _group(groups, "expand")
    assert expand.removable and expand.size == 12
    assert {s.layer for s in expand.followers} == {"bn_expand", "dw", "bn_dw"}
    np.testing.assert_array_equal(_by_layer(expand.followers, "dw").positions[5], [5])
    assert _by_layer(expand.followers, "dw").axis == -2
    project = _group(groups, "project")
    assert not project.removable and "input" in project.reason
    _removing_changes_nothing_downstream(model, expand, 5, (8, 8, 4))


def test_nested_models_are_followed():
    inner = keras.Sequential([keras.Input((8, 8, 6)), L.Conv2D(5, 3, name="inner_conv"), L.ReLU()], name="inner")
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="outer_conv")(inputs)
    x = L.GlobalAveragePooling2D()(inner(x))
    model = keras.Model(inputs, L.Dense(2, name="head")(x))
    groups = keras_dstee.channel_groups(model)
    outer = _group(groups, "outer_conv")
    assert outer.removable and [s.layer for s in outer.consumers] == ["inner_conv"]
    assert _group(groups, "inner_conv").removable
    _removing_changes_nothing_downstream(model, outer, 0, (8, 8, 3))


@pytest.mark.parametrize(
    "stopper, words",
    [
        (lambda: L.Reshape((8, 8 * 6)), "reshape (Reshape), whose channels can't be followed"),
        (lambda: L.LayerNormalization(), "(LayerNormalization), whose channels can't be followed"),
        (lambda: L.Activation("sigmoid"), "applies sigmoid, which maps 0 to a nonzero value"),
    ],
    ids=["reshape", "layer_norm", "sigmoid"],
)
def test_what_cannot_be_followed_is_named(stopper, words):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = stopper()(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(x)))
    conv = _group(keras_dstee.channel_groups(model), "conv")
    assert not conv.removable and words in conv.reason


# The graph analysis does not depend on the backend; building the three
# models eagerly takes 28 s on jax.
@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the same graph analysis on every backend")
def test_the_seed_models_have_what_chase_prunes():
    vgg = keras_dstee.channel_groups(keras_dstee.models.vgg19_cifar(10, width=0.125))
    convs = [g for g in vgg if g.layers[0].startswith("conv")]
    assert len(convs) == 16 and all(g.removable for g in convs)
    for build in (keras_dstee.models.resnet50_cifar, keras_dstee.models.resnet50_imagenet):
        groups = keras_dstee.channel_groups(build(10, width=0.125))
        inner = [g for g in groups if len(g.layers) == 1 and g.layers[0].endswith(("_conv1", "_conv2"))]
        assert len(inner) == 32 and all(g.removable for g in inner)
        streams = [g for g in groups if len(g.layers) > 1]
        assert len(streams) == 4 and all(g.removable for g in streams)  # one per stage

