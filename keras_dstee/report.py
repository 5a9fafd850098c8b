"""`summary(model)`: per-kernel density, nonzeros and inference FLOPs."""


import keras
import numpy as np

from keras_dstee import arguments
from keras_dstee import host
from keras_dstee.layers import layer_prunable_weights
from keras_dstee.structure import channels
from keras_dstee.structure import flops
from keras_dstee.structure import liveness
from keras_dstee.training.optimizer import find_sparse_optimizer


def _record_call_shapes(model, prunable_layers, input_shape):
    """Runs the model once on zeros (batch 1) and records, for each prunable
    layer, the (input shape, output shape) of every call."""
    shapes = {id(layer): [] for layer in prunable_layers}
    # The instance attribute shadows the class's `call` for this one run.
    shadowed = {id(layer): layer.__dict__.get("call") for layer in prunable_layers}
    for layer in prunable_layers:

        def recording_call(*args, __layer=layer, __call=layer.call, **kwargs):
            outputs = __call(*args, **kwargs)
            first_in = keras.tree.flatten(args)[0]
            first_out = keras.tree.flatten(outputs)[0]
            shapes[id(__layer)].append((tuple(first_in.shape), tuple(first_out.shape)))
            return outputs

        layer.call = recording_call
    try:
        if input_shape is None:
            inputs = getattr(model, "inputs", None)
            if not inputs:
                raise ValueError(
                    f"Can't tell the input shape of {model.name!r} (a "
                    "subclassed model?): pass `input_shape`, e.g. "
                    "`summary(model, input_shape=(32, 32, 3))`."
                )
            batch = [keras.ops.zeros((1,) + tuple(t.shape[1:]), t.dtype) for t in inputs]
            batch = batch[0] if len(batch) == 1 else batch
        else:
            batch = keras.ops.zeros((1,) + tuple(input_shape))
        model(batch, training=False)
    finally:
        for layer in prunable_layers:
            if shadowed[id(layer)] is None:
                del layer.call
            else:
                layer.call = shadowed[id(layer)]
    return shapes


def summary(model, input_shape=None, print_fn=None, optimizer=None):
    """Prints and returns each prunable kernel's density, nonzeros and FLOPs.

    FLOPs are inference multiply-adds for one example, counted the way the
    sparse-training literature does: each conv/dense layer's multiply-adds
    scaled by its kernel's density. Layers without prunable kernels
    (normalisation, pooling, activations) are not counted.

    Args:
        model: a built `keras.Model`, trained sparse or not.
        input_shape: one example's input shape, needed only when the model
            has no `inputs` (a subclassed model).
        print_fn: function that prints each line; defaults to `print`. Pass
            `lambda line: None` to only get the returned dict.
        optimizer: the `SparseOptimizer` training the model, for a custom
            training loop whose model was not compiled with it; by default
            the model's own optimizer. Without one, the masks are unknown
            and the table counts exact zeros.

    Returns:
        `{"kernels": [...], "total": {...}}`. Each kernel entry has `layer`,
        `path`, `shape`, `size`, `active` (positions allowed nonzero),
        `density`, `nonzeros`, `flops_dense`, `flops_sparse`, `block`
        (the block shape its mask changes in, or None), and `channels` and
        `live_channels` (its output channels in removable groups, and how
        many are alive: with an active weight in and out; None when its
        channels can't be removed); `total` sums
        `size`, `active`, `nonzeros`, both FLOPs and the channels, with the overall
        `density`, `sparsity` (`1 - density`: positions outside the masks,
        the figure the callbacks log) and `zero_fraction` (exact zeros, a
        little higher right after a mask update: grown weights start at 0);
        `from` says what `active` counts: `"masks"`, or `"zeros"` (exact
        zeros) when no `SparseOptimizer` is known.
    """
    arguments.keras_model(model, "summary")
    print_fn = print_fn or print
    if optimizer is None:
        optimizer = find_sparse_optimizer(getattr(model, "optimizer", None))
    elif find_sparse_optimizer(optimizer) is None:
        raise ValueError(f"`optimizer` must be a `keras_dstee.SparseOptimizer`. Received: {optimizer!r}")
    else:
        optimizer = find_sparse_optimizer(optimizer)
        _check_optimizer_trains(optimizer, model)
    active, block = {}, {}
    if optimizer is not None and optimizer.built:
        # What the masks allow now (a pruning method's budget shrinks).
        active = {id(k.variable): int(np.sum(host.to_numpy(k.mask))) for k in optimizer.kernels}
        block = {id(k.variable): k.block for k in optimizer.kernels}
    blocked = optimizer is not None and optimizer.built and optimizer.block_size is not None
    live = _live_output_channels(model, optimizer)
    layers = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        weights = layer_prunable_weights(layer, include_embeddings=True)
        if weights and all(seen is not layer for seen, _ in layers):
            layers.append((layer, weights))
    shapes = _record_call_shapes(model, [layer for layer, _ in layers], input_shape)

    rows = []
    for layer, weights in layers:
        for variable in weights:
            value = host.to_numpy(variable)
            nonzeros = int(np.count_nonzero(value))
            # Without the wrapper (a stripped or loaded model) the zeros tell.
            count = active.get(id(variable), nonzeros)
            density = count / value.size
            dense_flops = sum(flops.macs(layer, variable, i, o) for i, o in shapes[id(layer)])
            rows.append(
                {
                    "layer": layer.name,
                    "path": variable.path,
                    "shape": tuple(variable.shape),
                    "size": int(value.size),
                    "active": int(count),
                    "density": density,
                    "nonzeros": nonzeros,
                    "flops_dense": int(dense_flops),
                    "flops_sparse": int(round(dense_flops * density)),
                    "block": block.get(id(variable)),
                    "channels": live.get(id(variable), (None, None))[1],
                    "live_channels": live.get(id(variable), (None, None))[0],
                }
            )
    total = {key: sum(r[key] for r in rows) for key in ("size", "active", "nonzeros", "flops_dense", "flops_sparse")}
    size = total["size"] or 1
    total["density"] = total["active"] / size
    # The masks' sparsity, as the callbacks log it; exact zeros apart (a
    # weight grown at the last mask update may still read 0).
    total["sparsity"] = 1.0 - total["active"] / size
    total["zero_fraction"] = 1.0 - total["nonzeros"] / size
    total["from"] = "masks" if optimizer is not None and optimizer.built else "zeros"
    counted = [r for r in rows if r["channels"] is not None]
    total["channels"] = sum(r["channels"] for r in counted) if counted else None
    total["live_channels"] = sum(r["live_channels"] for r in counted) if counted else None
    # The column shows once channels are removed or have died.
    removing = getattr(optimizer, "channel_sparsity", 0) > 0
    shown = counted and (removing or total["live_channels"] < total["channels"])
    _print_table(model, rows, total, print_fn, blocked, shown)
    return {"kernels": rows, "total": total}


def _check_optimizer_trains(optimizer, model):
    """Refuses an optimizer built for another model's variables."""
    if not optimizer.built:
        raise ValueError("`optimizer` is not built yet: build it on `model.trainable_variables` first.")
    own = {id(v) for v in model.trainable_variables}
    if any(id(k.variable) not in own for k in optimizer.kernels):
        raise ValueError("`optimizer` trains the variables of another model than `model`.")


def _live_output_channels(model, optimizer):
    """id(kernel) -> (live, all) output channels of the kernels producing a
    removable channel group; empty for a model whose graph can't be read."""
    try:
        channels.check_graph_model(model, "summary")
    except ValueError:
        return {}
    masks = {} if optimizer is None or not optimizer.built else {id(k.variable): k.mask for k in optimizer.kernels}
    found = {}
    for group in channels.channel_groups(model):
        if not group.removable:
            continue
        alive = liveness.live_channels(group, masks)
        for s in group.producers:
            if len(s.variable.shape) > 1:
                owned = [c for c in range(group.size) if len(s.positions[c])]
                live, count = found.get(id(s.variable), (0, 0))
                found[id(s.variable)] = (live + int(alive[owned].sum()), count + len(owned))
    return found


def _block_text(row):
    if row["block"] is not None:
        return "x".join(map(str, row["block"]))
    return "unstructured" if row["density"] < 1 else "-"


def _print_table(model, rows, total, print_fn, blocked=False, channel_column=False):
    header = ("Kernel", "Shape", "Density", "Nonzeros", "FLOPs dense", "FLOPs sparse")
    table = [
        (
            r["path"],
            str(r["shape"]),
            f"{r['density']:.4f}",
            f"{r['nonzeros']:,}",
            f"{r['flops_dense']:,}",
            f"{r['flops_sparse']:,}",
        )
        for r in rows
    ]
    footer = (
        "Total",
        f"{total['size']:,} weights",
        f"{total['density']:.4f}",
        f"{total['nonzeros']:,}",
        f"{total['flops_dense']:,}",
        f"{total['flops_sparse']:,}",
    )
    if channel_column:
        count = lambda live, all_: "-" if all_ is None else f"{live}/{all_}"  # noqa: E731
        header += ("Live channels",)
        table = [cells + (count(r["live_channels"], r["channels"]),) for cells, r in zip(table, rows)]
        footer += (count(total["live_channels"], total["channels"]),)
    if blocked:
        # Which kernels change in blocks; the others' shapes don't divide.
        header += ("Blocks",)
        table = [cells + (_block_text(r),) for cells, r in zip(table, rows)]
        footer += ("",)
    widths = [max(len(line[i]) for line in [header, footer, *table]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(line(header))
    print_fn(f'Sparsity summary: "{model.name}" (FLOPs: multiply-adds per example)')
    print_fn(rule)
    print_fn(line(header))
    print_fn(rule)
    for cells in table:
        print_fn(line(cells))
    print_fn(rule)
    print_fn(line(footer))
    flops_ratio = total["flops_sparse"] / total["flops_dense"] if total["flops_dense"] else 0.0
    if total["from"] == "masks":
        sparsity = f"Sparsity {total['sparsity']:.4f} (masks), zero weights {total['zero_fraction']:.4f}"
    else:
        sparsity = (
            f"Sparsity {total['sparsity']:.4f} (exact zeros: no SparseOptimizer on the model; "
            "pass `optimizer=` for its masks)"
        )
    print_fn(f"{sparsity}; inference FLOPs {flops_ratio:.4f}x dense")
