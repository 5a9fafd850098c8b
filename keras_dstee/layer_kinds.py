"""What each built-in Keras layer kind is to keras-dstee, in one table.

Per kind: which of its weights are trained sparse (`prunable`), whether it
writes new channels through a kernel and which config key sets how many
(`width`: slimming rebuilds it narrower), and how channels pass through it
(`passes`): `"conv"` / `"transposed_conv"` (kernel axes in the usual or
swapped order), `"per_channel"` (each channel on its own, no weights),
`"merge"` (couples its inputs' channels). Training (what is prunable), the
channel-group analysis, slimming and the reports all read it; layers with
more particular rules (BatchNormalization, depthwise and separable convs,
Dense, EinsumDense, Flatten, Concatenate) are read by the code that needs
their attributes.
"""

import dataclasses

import keras

L = keras.layers
KERNEL = ("kernel",)


@dataclasses.dataclass(frozen=True)
class Kind:
    prunable: tuple = ()
    width: str = None
    passes: str = None


KINDS = {
    L.Dense: Kind(KERNEL, "units"),
    L.EinsumDense: Kind(KERNEL),
    L.Conv1D: Kind(KERNEL, "filters", "conv"),
    L.Conv2D: Kind(KERNEL, "filters", "conv"),
    L.Conv3D: Kind(KERNEL, "filters", "conv"),
    L.Conv1DTranspose: Kind(KERNEL, "filters", "transposed_conv"),
    L.Conv2DTranspose: Kind(KERNEL, "filters", "transposed_conv"),
    L.Conv3DTranspose: Kind(KERNEL, "filters", "transposed_conv"),
    L.DepthwiseConv1D: Kind(KERNEL),
    L.DepthwiseConv2D: Kind(KERNEL),
    L.SeparableConv1D: Kind(("depthwise_kernel", "pointwise_kernel"), "filters"),
    L.SeparableConv2D: Kind(("depthwise_kernel", "pointwise_kernel"), "filters"),
    **{cls: Kind(passes="merge") for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)},
    **{
        cls: Kind(passes="per_channel")
        for cls in (
            L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
            L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity,
            L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
            L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
            L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D,
            L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D,
            L.UpSampling2D, L.UpSampling3D, L.ReLU, L.LeakyReLU, L.ELU,
        )
    },
}
# Pruned only when asked (`include_embeddings=True`).
EMBEDDING = {L.Embedding: ("embeddings",)}


def passing(how):
    """The kinds whose channels pass `how`, as a tuple for `isinstance`."""
    return tuple(cls for cls, kind in KINDS.items() if kind.passes == how)


def prunable_weights():
    """`{layer class: names of its weights trained sparse}`."""
    return {cls: kind.prunable for cls, kind in KINDS.items() if kind.prunable}


def width_key(layer):
    """The config key setting `layer`'s output channels (exactly its kind,
    not a subclass, whose config may differ), or None."""
    kind = KINDS.get(type(layer))
    return None if kind is None else kind.width
