"""Channel groups: which output channels of a model can be removed together.

A pure analysis of a Functional or Sequential model's graph (nested
Functional and Sequential sub-models included), in the spirit of
Torch-Pruning's dependency graph: a producing kernel's output channel `c`
ties together the per-channel weights after it (biases, BatchNormalization
with its moving statistics, depthwise kernels) and the input slice `c` of
every kernel that reads it (a Flatten in between turns it into strided rows
of the Dense after it). Add, Subtract, Multiply, Average, Maximum and
Minimum tie the channels of their inputs position by position, and
Concatenate lays its inputs' channels side by side, so coupled channels
(a residual stream) form one group, removed together.

A group is not removable when its channels reach a layer whose channels
can't be followed (Reshape, LayerNormalization, attention, a custom layer),
the model's inputs or outputs, or an activation that maps 0 to a nonzero
value (a removed channel must output exactly 0); `reason` names the layer.
Only channels-last layouts are followed.
"""

import dataclasses
import re

import keras
import numpy as np

from keras_dstee import arguments
from keras_dstee import host
from keras_dstee import layer_kinds

L = keras.layers

# Activations with f(0) == 0: a removed channel (all its weights 0) still
# outputs exactly 0 through them.
ZERO_PRESERVING = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "tanh", "silu", "swish",
    "hard_silu", "hard_swish", "mish", "softsign", "celu",
}
# How channels pass through each layer kind (`layer_kinds.KINDS`).
PER_CHANNEL = layer_kinds.passing("per_channel")
MERGES = layer_kinds.passing("merge")
CONVS = layer_kinds.passing("conv")
TRANSPOSED = layer_kinds.passing("transposed_conv")


@dataclasses.dataclass
class ChannelSlice:
    """The positions of one variable along `axis` that belong to each channel
    of a group: `positions[i]` are channel `i`'s indices."""

    layer: str
    variable: object
    axis: int
    positions: list

    @property
    def path(self):
        return self.variable.path


@dataclasses.dataclass
class ChannelGroup:
    """Output channels removed together, and every weight slice they own.

    Attributes:
        size: how many channels the group has (each removable on its own).
        removable: whether its channels can be removed.
        reason: why not, naming the layer that stops it (None if removable).
        producers: the kernels (and biases) whose output channels these are.
        followers: per-channel weights after them (BatchNormalization's four
            vectors, depthwise kernels, their biases).
        consumers: the input slices of the kernels that read the channels.
    """

    size: int
    removable: bool
    reason: str
    producers: list
    followers: list
    consumers: list

    @property
    def layers(self):
        """Names of the layers whose kernels produce the group's channels."""
        return sorted({s.layer for s in self.producers})

    def __repr__(self):
        state = "removable" if self.removable else f"not removable: {self.reason}"
        return f"ChannelGroup({self.size} channels of {self.layers}, {state})"


class _Analysis:
    """Walks a model's graph, giving each tensor's last axis a layout: for
    every position, the channel (space, index) it carries."""

    def __init__(self):
        self.spaces = []  # per space: {"size", "reason"}
        self.parent = {}  # union-find over (space, channel) nodes
        self.producers, self.followers, self.consumers = [], [], []

    # --- spaces and coupling -------------------------------------------------

    def new_space(self, size, reason=None):
        self.spaces.append({"size": int(size), "reason": reason})
        space = len(self.spaces) - 1
        return (np.full(size, space), np.arange(size))

    def find(self, node):
        root = node
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while node != root:
            self.parent[node], node = root, self.parent.get(node, node)
        return root

    def couple(self, a, b):
        """Ties the channels of two layouts position by position."""
        for node_a, node_b in zip(zip(*a), zip(*b)):
            ra, rb = self.find((int(node_a[0]), int(node_a[1]))), self.find((int(node_b[0]), int(node_b[1])))
            if ra != rb:
                self.parent[rb] = ra

    def stop(self, layout, reason):
        for space in set(layout[0].tolist()):
            if self.spaces[space]["reason"] is None:
                self.spaces[space]["reason"] = reason

    # --- the graph -----------------------------------------------------------

    def run(self, model, input_layouts):
        """Layouts of `model`'s outputs, given its inputs' layouts."""
        if isinstance(model, keras.Sequential):
            model = model._functional
        layouts = {id(t): lay for t, lay in zip(keras.tree.flatten(model.inputs), input_layouts)}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                layer = node.operation
                if isinstance(layer, L.InputLayer):
                    continue
                inputs = [layouts[id(t)] for t in node.input_tensors]
                outputs = self.layer(layer, inputs, node)
                for tensor, layout in zip(node.output_tensors, outputs):
                    layouts[id(tensor)] = layout
        return [layouts[id(t)] for t in keras.tree.flatten(model.outputs)]

    def layer(self, layer, inputs, node):
        """One layer's output layouts (one per output tensor)."""
        outs = node.output_tensors
        name = f"{layer.name} ({type(layer).__name__})"
        if _has_graph(layer):
            return self.run(layer, inputs)
        channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
        if len(inputs) == 1 and channels_last:
            (x,) = inputs
            if isinstance(layer, PER_CHANNEL) and len(outs) == 1:
                return [x]
            if isinstance(layer, L.Activation):
                return [self.activation(layer, x, name)]
            if isinstance(layer, L.BatchNormalization) and layer.axis in (-1, len(outs[0].shape) - 1):
                weights = [w for w in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance) if w is not None]
                self.followers.append((layer, [(w, 0) for w in weights], x))
                return [x]
            if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)) and layer.depth_multiplier == 1:
                weights = [(layer.kernel, -2)] + ([(layer.bias, 0)] if layer.use_bias else [])
                self.followers.append((layer, weights, x))
                return [self.activation(layer, x, name)]
            if isinstance(layer, L.Flatten):
                spatial = int(np.prod(node.input_tensors[0].shape[1:-1]))
                return [(np.tile(x[0], spatial), np.tile(x[1], spatial))]
            kernel_axes = self.kernel_axes(layer)
            if kernel_axes is not None:
                reads, writes = kernel_axes
                self.consumers.append((layer, reads, x))
                out = self.new_space(outs[0].shape[-1])
                self.producers.append((layer, writes, out))
                return [self.activation(layer, out, name)]
        if isinstance(layer, MERGES) and len(inputs) > 1 and len({len(x[0]) for x in inputs}) == 1:
            for other in inputs[1:]:
                self.couple(inputs[0], other)
            return [inputs[0]]
        if isinstance(layer, L.Concatenate) and layer.axis in (-1, len(outs[0].shape) - 1):
            return [(np.concatenate([x[0] for x in inputs]), np.concatenate([x[1] for x in inputs]))]
        for x in inputs:
            self.stop(x, f"its channels reach {name}, whose channels can't be followed")
        return [self.new_space(t.shape[-1] or 0, f"made by {name}") for t in outs]

    def activation(self, layer, layout, name):
        function = getattr(layer, "activation", None)
        if function is None:
            return layout
        label = getattr(function, "__name__", str(function))
        if label not in ZERO_PRESERVING:
            self.stop(layout, f"{name} applies {label}, which maps 0 to a nonzero value")
        return layout

    @staticmethod
    def kernel_axes(layer):
        """For a layer that reads channels through a kernel and writes new
        ones: ([(variable, input axis)], [(variable, output axis)]); None
        for any other layer."""
        bias = [(layer.bias, 0)] if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None else []
        if isinstance(layer, CONVS) and layer.groups == 1:
            return [(layer.kernel, -2)], [(layer.kernel, -1)] + bias
        if isinstance(layer, TRANSPOSED):
            return [(layer.kernel, -1)], [(layer.kernel, -2)] + bias
        if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)) and layer.depth_multiplier == 1:
            return [(layer.depthwise_kernel, -2), (layer.pointwise_kernel, -2)], [(layer.pointwise_kernel, -1)] + bias
        if isinstance(layer, L.Dense) and len(layer.kernel.shape) == 2:
            return [(layer.kernel, 0)], [(layer.kernel, 1)] + bias
        if isinstance(layer, L.EinsumDense) and _last_axis_einsum(layer.equation):
            return [(layer.kernel, 0)], [(layer.kernel, 1)] + bias
        return None

    # --- the result ----------------------------------------------------------

    def groups(self):
        """The channel groups, in the order their first producer appears."""
        components = {}  # space -> {component root}
        space_parent = {}
        for space, info in enumerate(self.spaces):
            for channel in range(info["size"]):
                root = self.find((space, channel))
                components.setdefault(root, []).append((space, channel))
        # Spaces sharing a component belong to one group.
        def top(space):
            while space_parent.get(space, space) != space:
                space = space_parent[space]
            return space

        for members in components.values():
            first = top(members[0][0])
            for space, _ in members[1:]:
                other = top(space)
                if other != first:
                    space_parent[other] = first
        by_group = {}
        for root, members in components.items():
            by_group.setdefault(top(members[0][0]), []).append(root)
        index = {}  # (space, channel) -> (group key, channel index in group)
        for key, roots in by_group.items():
            roots.sort(key=lambda r: min(components[r]))
            for i, root in enumerate(roots):
                for node in components[root]:
                    index[node] = (key, i)

        def slices(records):
            found = {}
            for layer, weights, layout in records:
                for position, node in enumerate(zip(layout[0].tolist(), layout[1].tolist())):
                    key, channel = index[node]
                    for variable, axis in weights:
                        entry = found.setdefault((key, id(layer), id(variable), axis), (layer, variable, axis, {}))
                        entry[3].setdefault(channel, []).append(position)
            return found

        made, after, read = slices(self.producers), slices(self.followers), slices(self.consumers)
        result = []
        for key, roots in by_group.items():
            spaces = sorted({s for r in roots for s, _ in components[r]})
            producers = [e for k, e in made.items() if k[0] == key]
            if not producers:
                continue  # the model's inputs and what unfollowable layers make
            reason = next((self.spaces[s]["reason"] for s in spaces if self.spaces[s]["reason"]), None)
            size = len(roots)

            def as_slices(entries, size=size):
                return [
                    ChannelSlice(layer.name, variable, axis, [np.asarray(chosen.get(i, []), "int64") for i in range(size)])
                    for layer, variable, axis, chosen in entries
                ]

            result.append(
                ChannelGroup(
                    size=size,
                    removable=reason is None,
                    reason=reason,
                    producers=as_slices(producers),
                    followers=as_slices([e for k, e in after.items() if k[0] == key]),
                    consumers=as_slices([e for k, e in read.items() if k[0] == key]),
                )
            )
        return result


def nonzero_channels(slice_, source=None):
    """Per channel of the slice's group, whether any of its positions in
    `source` (default: the slice's variable; e.g. its mask) is nonzero."""
    # `host.to_numpy`: a mask sharded across JAX processes is gathered.
    value = host.to_numpy(slice_.variable if source is None else source) != 0
    axis = slice_.axis % value.ndim
    per_position = value.any(axis=tuple(i for i in range(value.ndim) if i != axis))
    return np.array([bool(per_position[np.asarray(p, int)].any()) for p in slice_.positions])


def _has_graph(model):
    """Whether `model` is a Functional or Sequential model (a graph to read)."""
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
    )


def check_graph_model(model, what):
    """Refuses, saying what to do, a model whose graph can't be read: a
    subclassed or an unbuilt one."""
    arguments.keras_model(model, what)
    if not _has_graph(model):
        raise ValueError(
            f"{what} needs a Functional or Sequential model, whose graph it can read; "
            f"{type(model).__name__} is subclassed. Rebuild it with the Functional API "
            "(or as a Sequential model) and copy its weights over."
        )
    if not model.built or (isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is None):
        raise ValueError("The model is not built yet: give it an `Input` or call it on a batch first.")


def _last_axis_einsum(equation):
    """Whether an EinsumDense equation contracts the input's last axis with
    a 2-D kernel's first and writes the kernel's last (a Dense in einsum)."""
    match = re.fullmatch(r"([\w.]+),(\w\w)->([\w.]+)", equation.replace(" ", ""))
    if match is None:
        return False
    source, kernel, target = match.groups()
    return source[-1] == kernel[0] and target[-1] == kernel[1] and source[:-1] == target[:-1] and kernel[0] not in target


def channel_groups(model):
    """The sets of output channels of `model` that can be removed together.

    Args:
        model: a built Functional or Sequential `keras.Model` (nested
            Functional and Sequential sub-models are followed).

    Returns:
        A list of `ChannelGroup`, one per set of coupled channels (a plain
        conv's outputs; a residual stream with every conv writing to it),
        each with `size`, `removable`, `reason` and the `producers`,
        `followers` and `consumers` slices of every weight involved.
    """
    check_graph_model(model, "channel_groups")
    analysis = _Analysis()
    inputs = [analysis.new_space(t.shape[-1] or 0, "the model's input") for t in keras.tree.flatten(model.inputs)]
    for layout in analysis.run(model, inputs):
        analysis.stop(layout, "its channels are the model's output")
    return analysis.groups()
