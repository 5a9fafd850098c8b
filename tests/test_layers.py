"""Every prunable layer type and model shape trains sparse with exact budgets."""

import keras
import numpy as np
import pytest
from helpers import assert_budget
from helpers import compile_model
from helpers import only_on

import keras_dstee
from keras_dstee.layers import prunable_variables
from keras_dstee.training.distributions import active_count

L = keras.layers

# name: (input shape, layer factory, number of sparse kernels it adds)
LAYERS = {
    "dense": ((12,), lambda: L.Dense(16), 1),
    "einsum_dense": ((6, 12), lambda: L.EinsumDense("abc,cde->abde", (6, 4, 8)), 1),
    "conv1d": ((10, 4), lambda: L.Conv1D(8, 3), 1),
    "conv2d": ((8, 8, 4), lambda: L.Conv2D(8, 3), 1),
    "conv3d": ((5, 5, 5, 2), lambda: L.Conv3D(8, 3), 1),
    "conv1d_transpose": ((10, 4), lambda: L.Conv1DTranspose(8, 3), 1),
    "conv2d_transpose": ((6, 6, 4), lambda: L.Conv2DTranspose(8, 3), 1),
    "conv3d_transpose": ((4, 4, 4, 2), lambda: L.Conv3DTranspose(8, 3), 1),
    "depthwise_conv1d": ((10, 8), lambda: L.DepthwiseConv1D(3, depth_multiplier=2), 1),
    "depthwise_conv2d": ((8, 8, 8), lambda: L.DepthwiseConv2D(3, depth_multiplier=2), 1),
    "separable_conv1d": ((10, 8), lambda: L.SeparableConv1D(16, 3, depth_multiplier=2), 2),
    "separable_conv2d": ((8, 8, 8), lambda: L.SeparableConv2D(16, 3, depth_multiplier=2), 2),
}


# Compiled steps: XLA on tensorflow and jax. On torch, eager (Keras's
# default there): torch.compile (inductor) spends 30-120 s compiling one
# training step on a 2-core CPU (measured), and the compiled step with masks
# is checked for every optimizer in test_training.py; the layer kind changes
# only which kernels get masks.
def _fit(model, x, y, callback, steps=6):
    jit_compile = keras.backend.backend() != "torch"
    compile_model(model, keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[callback])
    assert_budget(model)
    return model


def _data(input_shape, n=48, classes=3, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    if integer:
        x = rng.integers(0, 50, size=(n, *input_shape))
    else:
        x = rng.normal(size=(n, *input_shape)).astype("float32")
    return x, rng.integers(0, classes, size=n)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_trains_sparse(name):
    input_shape, make, count = LAYERS[name]
    keras.utils.set_random_seed(0)
    layer = make()
    model = keras.Sequential([keras.Input(input_shape), layer, L.Flatten(), L.Dense(3)])
    x, y = _data(input_shape)
    # Uniform: every kernel, however small, is sparse.
    callback = keras_dstee.DSTEE(sparsity=0.7, distribution="uniform", update_freq=2, seed=0)
    model = _fit(model, x, y, callback)
    sparse = {id(k.variable) for k in model.optimizer.kernels}
    own = [v for v in layer.trainable_variables if len(v.shape) >= 2]
    assert len(own) == count
    assert all(id(v) in sparse for v in own)
    assert all(id(v) not in sparse for v in layer.trainable_variables if len(v.shape) < 2)


def test_multi_head_attention():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    x = L.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
    outputs = L.Dense(3)(L.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    x, y = _data((6, 16))
    model = _fit(model, x, y, keras_dstee.DSTEE(sparsity=0.8, update_freq=2, seed=0))
    paths = {k.variable.path for k in model.optimizer.kernels}
    for part in ("query", "key", "value", "attention_output"):
        assert f"mha/{part}/kernel" in paths


@pytest.mark.parametrize("include", [False, True])
def test_embedding_is_opt_in(include):
    keras.utils.set_random_seed(0)
    embedding = L.Embedding(50, 8)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), embedding, L.Flatten(), L.Dense(3)])
    x, y = _data((5,), integer=True)
    callback = keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0,
                                 include_embeddings=include)
    model = _fit(model, x, y, callback)
    sparse = {id(k.variable) for k in model.optimizer.kernels}
    assert (id(embedding.embeddings) in sparse) == include


class LowRank(L.Layer):
    """A custom layer naming its prunable weight through the protocol."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 16), name="w")
        self.scale = self.add_weight(shape=(16,), initializer="ones", name="scale")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.scale

    def get_prunable_weights(self):
        return [self.w]


def test_custom_layer_protocol():
    keras.utils.set_random_seed(0)
    layer = LowRank()
    model = keras.Sequential([keras.Input((12,)), layer, L.Dense(3)])
    x, y = _data((12,))
    model = _fit(model, x, y, keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0))
    sparse = {id(k.variable) for k in model.optimizer.kernels}
    assert id(layer.w) in sparse and id(layer.scale) not in sparse


def test_shared_layer_has_one_mask():
    keras.utils.set_random_seed(0)
    shared = L.Dense(16, name="shared")
    a, b = keras.Input((12,)), keras.Input((12,))
    merged = L.Concatenate()([shared(a), shared(b)])
    model = keras.Model([a, b], L.Dense(3)(merged))
    assert len(prunable_variables(model)) == 2
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(48, 12)).astype("float32") for _ in range(2)]
    y = rng.integers(0, 3, size=48)
    model = _fit(model, x, y, keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0))
    assert [k.variable.path for k in model.optimizer.kernels].count(shared.kernel.path) == 1
    report = keras_dstee.summary(model, print_fn=lambda line: None)
    row = next(r for r in report["kernels"] if r["path"] == shared.kernel.path)
    assert row["flops_dense"] == 2 * 12 * 16  # counted for both calls


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(8, 3)
        self.pool = L.GlobalAveragePooling2D()
        self.head = L.Dense(3)

    def call(self, x):
        return self.head(self.pool(self.conv(x)))


def test_subclassed_and_nested_models():
    keras.utils.set_random_seed(0)
    x, y = _data((8, 8, 4))
    model = Subclassed()
    model(x[:1])
    model = _fit(model, x, y, keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0))
    assert len(model.optimizer.kernels) == 2
    report = keras_dstee.summary(model, input_shape=(8, 8, 4), print_fn=lambda line: None)
    assert report["kernels"][0]["flops_dense"] == 3 * 3 * 4 * 8 * 6 * 6

    conv = L.Conv2D(8, 3)
    inner = keras.Sequential([keras.Input((8, 8, 4)), conv, L.Flatten()], name="inner")
    inputs = keras.Input((8, 8, 4))
    head = L.Dense(3)
    outer = keras.Model(inputs, head(inner(inputs)))
    outer = _fit(outer, x, y, keras_dstee.DSTEE(sparsity=0.8, distribution="uniform", update_freq=2, seed=0))
    sparse = [id(k.variable) for k in outer.optimizer.kernels]
    assert sorted(sparse) == sorted([id(conv.kernel), id(head.kernel)])


APPLICATIONS = {
    "resnet50": keras.applications.ResNet50,
    "vgg19": keras.applications.VGG19,
    "mobilenet_v2": keras.applications.MobileNetV2,
}


@only_on("tensorflow", "which kernels of a real architecture get masks")
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications(name):
    keras.utils.set_random_seed(0)
    model = APPLICATIONS[name](
        weights=None, input_shape=(32, 32, 3), classes=3, classifier_activation=None
    )
    x, y = _data((32, 32, 3), n=8)
    densities = keras_dstee.layer_densities(model, 0.9)
    shapes = {v.path: tuple(v.shape) for v in model.trainable_variables}
    expected = sum(active_count(shapes[p], d) < np.prod(shapes[p]) for p, d in densities.items())
    assert expected > 10
    compile_model(model, keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
    model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=2, verbose=0,
              callbacks=[keras_dstee.DSTEE(sparsity=0.9, update_freq=1, seed=0)])
    assert_budget(model)
    assert len(model.optimizer.kernels) == expected


def _backbone_model(backbone, pool):
    inputs = keras.Input((32, 32, 3))
    outputs = L.Dense(3)(pool()(backbone(inputs)))
    return keras.Model(inputs, outputs)


def _hub_resnet():
    keras_hub = pytest.importorskip("keras_hub")
    return _backbone_model(
        keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128],
            stackwise_num_blocks=[2, 2],
            stackwise_num_strides=[1, 2],
            block_type="bottleneck_block",
            image_shape=(32, 32, 3),
        ),
        L.GlobalAveragePooling2D,
    )


def _hub_vgg():
    keras_hub = pytest.importorskip("keras_hub")
    return _backbone_model(
        keras_hub.models.VGGBackbone(
            stackwise_num_repeats=[2, 2], stackwise_num_filters=[16, 32], image_shape=(32, 32, 3)
        ),
        L.Flatten,
    )


def _cv_resnet_v2():
    keras_cv = pytest.importorskip("keras_cv")
    return _backbone_model(
        keras_cv.models.ResNetV2Backbone(
            stackwise_filters=[16, 32],
            stackwise_blocks=[2, 2],
            stackwise_strides=[1, 2],
            input_shape=(32, 32, 3),
            include_rescaling=False,
        ),
        L.GlobalAveragePooling2D,
    )


# Built from explicit configs: their presets download weights.
BACKBONES = {"hub_resnet": _hub_resnet, "hub_vgg": _hub_vgg, "cv_resnet_v2": _cv_resnet_v2}


@only_on("tensorflow", "which kernels of a real architecture get masks")
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_keras_hub_and_keras_cv_backbones(name):
    keras.utils.set_random_seed(0)
    model = BACKBONES[name]()
    x, y = _data((32, 32, 3), n=8)
    expected = len(prunable_variables(model))
    model = _fit(model, x, y, keras_dstee.DSTEE(sparsity=0.9, distribution="uniform", update_freq=1, seed=0), steps=2)
    assert expected >= 5 and len(model.optimizer.kernels) == expected
