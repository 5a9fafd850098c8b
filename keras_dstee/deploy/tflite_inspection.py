"""What a converted `.tflite` graph does with each prunable kernel.

TFLite stores a sparse weight in one of three ways, measured with TF 2.21:
a `FullyConnected` weight whose zeros come in 1x4 blocks of its
`(output, input)` layout stays sparse and runs on TFLite's sparse kernel
(faster than dense); any other sparse weight is stored compressed and
expanded by a `DENSIFY` op when the interpreter loads (smaller file, dense
speed); a weight with too few (or too scattered) zeros is stored dense. In
int8 files the sparse FullyConnected kernel takes 1x16 blocks only, and
`tflite_rewrite` stores int8 weights dense that would need `DENSIFY`.
"""

import math
import re

from keras_dstee.deploy import tflite_runner

# Ops that take a weight tensor as their second input.
_WEIGHT_OPS = (
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "CONV_3D",
    "TRANSPOSE_CONV",
    "BATCH_MATMUL",
)

SPARSE, DENSIFIED, DENSE, NOT_FOUND = "sparse kernel", "densified at load", "dense", "not found"
# An int8 weight stored dense by `tflite_rewrite` so the file loads in the
# default interpreter.
DENSE_FOR_XNNPACK = "dense (int8, for the default interpreter)"
# A weight `optimize_for="latency"` keeps dense: the sparse kernel is slower.
DENSE_FOR_SPEED = "dense (faster here)"


def _graph(tflite_bytes):
    """Ops (name, input and output tensor indices) and tensor details of the
    graph as converted, before any delegate rewrites it."""
    interpreter = tflite_runner.open_interpreter(tflite_bytes, builtin_only=True)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter._get_ops_details(), tensors


def _weight_uses(tflite_bytes, rewritten=(), kept_dense=None):
    """One entry per weight-taking op: op name, how its weight is stored,
    the weight's size, whether it is int8, and the tensor names that may
    name the layer. `rewritten`: int8 weights `tflite_rewrite` stored
    dense; `kept_dense`: name -> rows of the weights kept dense for speed."""
    kept_dense = kept_dense or {}
    ops, tensors = _graph(tflite_bytes)
    producer = {out: op for op in ops for out in op["outputs"]}
    uses = []
    for op in ops:
        if op["op_name"] not in _WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        index = op["inputs"][1]
        names = [tensors[i]["name"] for i in op["outputs"] if i in tensors]
        source = producer.get(index)
        # Follow int8 dequantization back to the stored constant.
        while source is not None and source["op_name"] == "DEQUANTIZE":
            index = source["inputs"][0]
            source = producer.get(index)
        if source is not None and source["op_name"] == "DENSIFY":
            storage = DENSIFIED
            index = source["inputs"][0]
        elif source is not None:
            continue  # a computed operand (attention's matmuls), not a weight
        elif tensors[index]["sparsity_parameters"]:
            storage = SPARSE
        else:
            storage = DENSE
        weight = tensors[index]
        names.append(weight["name"])
        if storage == DENSE and weight["name"] in rewritten:
            storage = DENSE_FOR_XNNPACK
        rows = kept_dense.get(weight["name"]) if storage == DENSE else None
        if rows is not None:
            storage = DENSE_FOR_SPEED
        uses.append(
            {
                "op": op["op_name"],
                "storage": storage,
                "size": int(math.prod(weight["shape"])),
                "names": names,
                "int8": weight["dtype"].__name__ == "int8",
                "rows": rows,
            }
        )
    return uses


def _names_layer(names, layer_name):
    # TF names a layer's ops "<model>/<layer>_<n>/..." or "<model>/<layer>/...".
    pattern = re.compile(rf"(^|/){re.escape(layer_name)}(_\d+)?/")
    return any(pattern.search(n) for n in names)


def _reason(op, storage, int8=False, rows=None):
    if storage == DENSE_FOR_SPEED:
        return (
            f"applied to {rows} rows per sample: XNNPack's dense matrix product beats TFLite's "
            "sparse kernel there, so it is stored dense"
        )
    if storage == SPARSE:
        return "runs on TFLite's sparse FullyConnected kernel"
    if storage == NOT_FOUND:
        return "no TFLite op with this kernel found (folded or renamed)"
    if storage == DENSE:
        return "stored dense (too few zeros for the sparse format)"
    if op == "FULLY_CONNECTED" and int8:
        # TFLite's int8 sparse FullyConnected kernel takes 1x16 blocks only.
        return "int8 runs sparse only with zeros in 1x16 blocks of (output, input): train with block_size=(16, 1)"
    if storage == DENSE_FOR_XNNPACK:
        return "int8 sparse storage of this op fails in the default XNNPack delegate, so it is stored dense"
    if op == "FULLY_CONNECTED":
        return "zeros not in 1x4 blocks of (output, input): train with block_size=(4, 1)"
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return (
            "TFLite densifies conv weights; only XNNPACK's sparse path on ARM "
            "runs them sparse (see keras_dstee.xnnpack_sparse_check)"
        )
    return f"TFLite has no sparse {op} kernel"


def inspect_tflite(tflite_bytes, model, rewritten=(), kept_dense=()):
    """Per prunable kernel of `model`, how the converted graph runs it
    (`rewritten`: the int8 weights `tflite_rewrite` stored dense;
    `kept_dense`: `{"name", "rows"}` of the weights kept dense for speed).

    Kernels are matched to TFLite ops by size, then by the layer's name in
    the op's tensor names, then in graph order.

    Returns:
        A list of dicts, one per prunable kernel in model order: `layer`,
        `path`, `op` (the TFLite op, or None), `storage` (`"sparse kernel"`,
        `"densified at load"`, `"dense"`, `"dense (faster here)"`, `"dense
        (int8, for the default interpreter)"` or `"not found"`) and `reason`.
    """
    from keras_dstee.layers import prunable_layer_variables

    uses = _weight_uses(tflite_bytes, set(rewritten), {k["name"]: k["rows"] for k in kept_dense})
    rows = []
    for layer, variable in prunable_layer_variables(model):
        size = math.prod(variable.shape)
        candidates = [u for u in uses if u["size"] == size]
        named = [u for u in candidates if _names_layer(u["names"], layer.name)]
        use = (named or candidates or [None])[0]
        if use is not None:
            uses.remove(use)
        op, storage = (use["op"], use["storage"]) if use else (None, NOT_FOUND)
        int8, weight_rows = (use["int8"], use["rows"]) if use else (False, None)
        rows.append(
            {
                "layer": layer.name,
                "path": variable.path,
                "op": op,
                "storage": storage,
                "reason": _reason(op, storage, int8, weight_rows),
            }
        )
    return rows
