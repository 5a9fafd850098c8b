"""Rebuilding a model in place without some of its channels.

`slim` builds a new, smaller model. A run that shrinks while it trains
cannot: `fit`, the callbacks and the user all hold the model object. So
each layer that loses channels gets sliced variables in place of its old
ones (same names and paths, so the optimizer slots, checkpoints and
`keras.distribution` layouts that go by path still find them), its width
setting (`units`, `filters`) is lowered, and the shapes the graph records
(its symbolic tensors, each layer's input spec and build shapes, which
saving writes and loading rebuilds from) are computed again.

This reaches into Keras 3 internals (the layer's variable tracker and the
graph's nodes), measured on Keras 3.15 (`benchmarks/spikes/`); the tests
rebuild, train on, save and load on every backend, so a Keras release that
changes them fails there first.
"""

import contextlib

import keras
import numpy as np
from keras import tree

from keras_dstee import layer_kinds


def channel_cut(groups_and_gone):
    """What removing channels cuts.

    Args:
        groups_and_gone: pairs `(group, channels)`: a removable
            `ChannelGroup` and the indices of its channels that go.

    Returns:
        `(cut, widths)`: `{id(variable): {axis: set of positions}}` for every
        weight that loses positions, and `{layer name: output channels}`
        for every producing layer that gets narrower.
    """
    cut, widths = {}, {}
    for group, gone in groups_and_gone:
        if not len(gone):
            continue
        for s in group.producers + group.followers + group.consumers:
            axes = cut.setdefault(id(s.variable), {})
            axis = s.axis % len(s.variable.shape)
            axes.setdefault(axis, set()).update(int(p) for c in gone for p in s.positions[c])
        for s in group.producers:
            if s.variable.name in ("kernel", "pointwise_kernel"):
                axis = s.axis % len(s.variable.shape)
                widths[s.layer] = s.variable.shape[s.axis] - len(cut[id(s.variable)][axis])
    return cut, widths


def sliced(value, removed):
    """`value` (an array) without the positions `removed` (`{axis:
    positions}`) along each axis."""
    for axis, positions in removed.items():
        value = np.delete(value, sorted(positions), axis=axis)
    # np.delete along a last axis can return a transposed layout; a torch
    # variable made from it keeps those strides, and every elementwise op
    # on it (the optimizer's, the masks') then runs several times slower.
    return np.ascontiguousarray(value)


def unrebuildable(model, groups):
    """The layers of removable `groups` that an in-place rebuild cannot
    narrow (a producing layer whose exact kind has no width setting, e.g.
    a subclass of `Dense`), as `[(layer name, why)]`."""
    layers = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
    found = []
    for group in groups:
        if not group.removable:
            continue
        for s in group.producers:
            layer = layers.get(s.layer)
            if layer is None or layer_kinds.width_key(layer) is None:
                found.append((s.layer, f"{type(layer).__name__} has no known width setting"))
    return sorted(set(found))


def cut_in_place(model, cut, widths):
    """Slices `model`'s variables as `cut` says and narrows the `widths`
    layers, in place (see the module docstring).

    Args:
        model: a built Functional or Sequential model.
        cut, widths: as `channel_cut` returns them.

    Returns:
        `(replaced, undo)`: `{id(old variable): (new variable, removed)}`
        with `removed` `{axis: sorted positions}` for every variable
        replaced, and a function that puts the model back as it was (for a
        caller whose next step fails).

    On any error the model is left exactly as it was (its old variables,
    widths and shapes) and the error is raised.
    """
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    # Everything that can fail before the first change: the new values.
    swaps = []
    for layer in layers:
        for attribute, value in list(vars(layer).items()):
            if isinstance(value, keras.Variable) and id(value) in cut:
                removed = {axis: sorted(p) for axis, p in cut[id(value)].items()}
                swaps.append((layer, attribute, value, sliced(keras.ops.convert_to_numpy(value), removed), removed))
    missing = set(cut) - {id(old) for _, _, old, _, _ in swaps}
    if missing:
        names = [v.path for v in model.weights if id(v) in missing]
        raise ValueError(f"Can't rebuild in place: no layer attribute holds {names}.")
    undo = []
    replaced = {}
    try:
        strategy = getattr(model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            for layer, attribute, old, value, removed in swaps:
                # One new variable per old one, however many attributes hold it.
                new = replaced[id(old)][0] if id(old) in replaced else _new_variable(old, value)
                _swap(layer, attribute, old, new)
                undo.append(lambda layer=layer, a=attribute, old=old, new=new: _swap(layer, a, new, old))
                replaced[id(old)] = (new, removed)
        by_name = {layer.name: layer for layer in layers}
        for name, width in widths.items():
            layer = by_name[name]
            key = layer_kinds.width_key(layer)
            before = getattr(layer, key)
            undo.append(lambda layer=layer, key=key, value=before: setattr(layer, key, value))
            setattr(layer, key, width)
        undo += refresh_shapes(model)
    except BaseException:
        _undo(undo, layers)
        raise
    _retrack_torch(layers)
    return replaced, lambda: _undo(undo, layers)


def _undo(steps, layers):
    for step in reversed(steps):
        step()
    _retrack_torch(layers)


def _new_variable(old, value):
    """A variable like `old` (name, path, dtype, trainable, constraint,
    aggregation) holding `value`."""
    with contextlib.ExitStack() as stack:
        for part in old.path.split("/")[:-1]:
            stack.enter_context(keras.name_scope(part))
        new = keras.Variable(
            value,
            dtype=old.dtype,
            trainable=old.trainable,
            name=old.name,
            aggregation=old.aggregation,
            synchronization=getattr(old, "synchronization", "auto"),
        )
    if new.path != old.path:
        raise RuntimeError(f"Rebuilt variable {old.path!r} got the path {new.path!r}.")
    new.constraint = old.constraint
    new.regularizer = old.regularizer
    return new


def _swap(layer, attribute, old, new):
    """Puts `new` where `old` was: the attribute and its place in the
    layer's variable lists (the order saving and the optimizer rely on)."""
    tracker = getattr(layer, "_tracker", None)
    locked = tracker is not None and tracker.locked
    if tracker is not None:
        tracker.unlock()
    try:
        object.__setattr__(layer, attribute, new)
    finally:
        if locked:
            tracker.lock()
    _swap_tf_dependency(layer, attribute, old, new)
    for name in ("_trainable_variables", "_non_trainable_variables"):
        variables = getattr(layer, name, None)
        if variables is None:
            continue
        for i, v in enumerate(variables):
            if v is old:
                variables[i] = new


def _swap_tf_dependency(layer, attribute, old, new):
    """TensorFlow's object graph (checkpoints, SavedModel) names an
    attribute's variable apart from Keras's lists: left alone, it keeps the
    old variable in that graph and alive. Written around Keras's tracking
    (its containers would add `new` to the layer's variables once more)."""
    names = vars(layer).get("_self_unconditional_dependency_names")
    if names is None or names.get(attribute) is not old:
        return
    dict.__setitem__(names, attribute, new)
    references = layer._self_unconditional_checkpoint_dependencies
    for i, reference in enumerate(references):
        if reference.name == attribute:
            list.__setitem__(references, i, type(reference)(name=attribute, ref=new))


def _retrack_torch(layers):
    """Torch modules register their variables' tensors by path once: point
    them at the current variables (the old tensors are released)."""
    for layer in layers:
        # A torch.nn.Module keeps it among its submodules, not in `vars`.
        if "_torch_params" in getattr(layer, "_modules", {}):
            del layer._torch_params
            layer._track_variables()


def refresh_shapes(model):
    """Recomputes, from the layers' current widths, the shapes `model`'s
    graph records: each symbolic tensor's, each layer's build shapes and
    input spec (nested models and their input layers included). Returns
    the steps that undo it."""
    undo = []
    graph = getattr(model, "_functional", None) or model  # a Sequential's graph
    if not hasattr(graph, "_nodes_by_depth"):
        return undo
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.is_input:
                continue
            operation = node.operation
            arguments = node.arguments
            shapes = [tuple(t.shape) for t in arguments.keras_tensors]
            _set_build_shapes(operation, arguments, undo)
            if hasattr(operation, "_nodes_by_depth") or hasattr(operation, "_functional"):
                undo += _refresh_inner_inputs(operation, shapes)
            spec = operation.compute_output_spec(*arguments.args, **arguments.kwargs)
            for tensor, new in zip(node.outputs, tree.flatten(spec)):
                if tuple(tensor.shape) != tuple(new.shape):
                    undo.append(lambda t=tensor, s=tensor.shape: setattr(t, "_shape", s))
                    tensor._shape = tuple(new.shape)
    return undo


def _refresh_inner_inputs(submodel, shapes):
    """A nested model whose inputs changed: its input layers and input
    tensors take the new shapes, then its own graph is refreshed."""
    undo = []
    graph = getattr(submodel, "_functional", None) or submodel
    inputs = tree.flatten(graph.inputs) if getattr(graph, "inputs", None) else []
    for tensor, shape in zip(inputs, shapes):
        if tuple(tensor.shape) == shape:
            continue
        layer = tensor._keras_history.operation
        undo.append(lambda t=tensor, s=tensor.shape: setattr(t, "_shape", s))
        tensor._shape = tuple(shape)
        if hasattr(layer, "_batch_shape"):
            undo.append(lambda layer=layer, s=layer._batch_shape: setattr(layer, "_batch_shape", s))
            layer._batch_shape = shape
    undo += refresh_shapes(submodel)
    return undo


def _set_build_shapes(layer, arguments, undo):
    """The layer's recorded build shapes and input spec, from the shapes of
    the tensors it is now called on."""
    recorded = getattr(layer, "_build_shapes_dict", None)
    if not recorded:
        return
    tensors = [t for t in tree.flatten((arguments.args, arguments.kwargs)) if isinstance(t, keras.KerasTensor)]
    keys = list(recorded)
    values = arguments.args[0] if len(keys) == 1 and arguments.args else None
    if len(keys) == 1 and values is not None:
        new = {keys[0]: tree.map_structure(lambda t: tuple(t.shape), values)}
    elif len(keys) == len(tensors):
        new = {k: tuple(t.shape) for k, t in zip(keys, tensors)}
    else:
        return
    old = dict(recorded)
    if _as_tuples(old) == _as_tuples(new):
        return
    undo.append(lambda layer=layer, old=old: setattr(layer, "_build_shapes_dict", old))
    layer._build_shapes_dict = new
    spec = getattr(layer, "input_spec", None)
    old_shape, new_shape = next(iter(old.values())), next(iter(new.values()))
    if spec is None or not isinstance(old_shape, tuple) or not isinstance(new_shape, tuple):
        return
    for s in tree.flatten(spec):
        axes = getattr(s, "axes", None)
        if not axes:
            continue
        for axis, size in list(axes.items()):
            if old_shape[axis] == size and new_shape[axis] != size:
                undo.append(lambda axes=axes, axis=axis, size=size: axes.__setitem__(axis, size))
                axes[axis] = new_shape[axis]


def _as_tuples(shapes):
    """Shapes nested in dicts and lists, with every shape a tuple."""
    if isinstance(shapes, dict):
        return {k: _as_tuples(v) for k, v in shapes.items()}
    if isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)):
        return [_as_tuples(v) for v in shapes]
    return tuple(shapes) if isinstance(shapes, (list, tuple)) else shapes
