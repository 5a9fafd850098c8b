"""Rewrites of a converted `.tflite` graph, so it runs in the default interpreter and is smaller.

TFLite stores a sparse weight that has no sparse kernel compressed, with a
`DENSIFY` op that expands it when the interpreter loads. For float weights
the default XNNPack delegate does that expansion itself; for int8 weights
(dynamic-range and full-integer files) it can fail to prepare ("failed to
delegate CONV_2D ... TfLiteXNNPackDelegate failed to prepare": small CNNs
and MLPs; a ResNet-50's unstructured classifier, not its convs; TF 2.21 /
ai-edge-litert 2.3). `export` calls this only for a file that fails, for
the weights of the node that failed. Those weights are stored dense here,
with the values TFLite's own `DENSIFY` computes, and the `DENSIFY` ops
removed. int8 weights on TFLite's sparse FullyConnected kernel (no
`DENSIFY`) keep their sparse storage; their op gets the sparse-weight op
version, so the default interpreter leaves them to that kernel. Each
distinct quantization vector (scales, zero points) is stored once, and
each expanded weight is compressed along the axis with the narrowest
indices.
"""

import copy

import numpy as np

from keras_dstee.deploy import tflite_runner


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return schema, flatbuffer_utils


def _pack(model):
    """The file of a parsed model (`flatbuffer_utils` object API), with each
    distinct float32 or int64 vector stored once: in a TFLite file those
    are quantization scales and zero points only."""
    import flatbuffers

    _, flatbuffer_utils = _schema()

    class OnceBuilder(flatbuffers.Builder):
        def __init__(self, size):
            super().__init__(size)
            self.stored = {}

        def CreateNumpyVector(self, values):
            if values.dtype not in (np.float32, np.int64):
                return super().CreateNumpyVector(values)
            key = (values.dtype.str, values.tobytes())
            if key not in self.stored:
                # Offsets count from the buffer's end: later tables reach it.
                self.stored[key] = super().CreateNumpyVector(values)
            return self.stored[key]

    builder = OnceBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=flatbuffer_utils._TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _opcode(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    # Builtin codes above 127 live in `builtinCode` only.
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def densify_int8_weights(tflite_bytes, node=None):
    """Stores int8 weights that a `DENSIFY` op expands as dense constants
    instead, and drops those ops: every such weight, or with `node` (an
    operator index, as the interpreter's errors number them) those that
    operator reads.

    Returns:
        `(tflite_bytes, names)`: the rewritten file (the input unchanged if
        there was nothing to rewrite) and the names of the rewritten weights.
    """
    schema, flatbuffer_utils = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    int8 = (schema.TensorType.INT8, schema.TensorType.UINT8)
    targets = []
    graph = model.subgraphs[0]  # Keras exports one graph
    read = None
    if node is not None and 0 <= node < len(graph.operators):
        read = {int(i) for i in graph.operators[node].inputs}
    for op in _ops(model, graph, schema.BuiltinOperator.DENSIFY):
        if graph.tensors[op.inputs[0]].type in int8 and (read is None or int(op.outputs[0]) in read):
            targets.append(op)
    if not targets:
        return tflite_bytes, []
    dense = tflite_runner.tensor_values(tflite_bytes, [int(op.outputs[0]) for op in targets])
    names = []
    for op, values in zip(targets, dense):
        source, expanded = int(op.inputs[0]), int(op.outputs[0])
        weight = graph.tensors[source]
        weight.sparsity = None
        weight.shape = np.array(values.shape, np.int32)
        model.buffers[weight.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
        # Consumers read the (now dense) constant; DENSIFY goes.
        for other in graph.operators:
            other.inputs = np.array([source if i == expanded else i for i in other.inputs], np.int32)
        graph.operators.remove(op)
        names.append(weight.name.decode() if isinstance(weight.name, bytes) else weight.name)
    _drop_unused_tensors(model, 0, graph)
    return _pack(model), names


def quantization_stored_once(tflite_bytes):
    """Stores every quantization vector once. The converter writes a
    `DENSIFY`-expanded weight's per-channel scales and int64 zero points
    twice (on the stored weight, which nothing reads, and on the expanded
    tensor: the copy goes), and a zero-point vector (all zeros for int8
    weights and int32 biases) for every weight and bias: tensors with equal
    scales or zero points now point at one copy, as flatbuffers allow.
    Per-channel scales and zero points cost 12 bytes a channel; on a
    98 %-sparse full-int8 ResNet-50-CIFAR the copies were 30 % of the file
    (2.34 -> 1.63 MB, `benchmarks/export_size.py`). Outputs are
    bit-identical (measured). Apply it last: a weight stored dense again
    (`densify_int8_weights`) needs its own quantization.

    Returns:
        The smaller of the file and its rewrite (the input itself if
        nothing was stored twice).
    """
    schema, flatbuffer_utils = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    graph = model.subgraphs[0]
    for op in _ops(model, graph, schema.BuiltinOperator.DENSIFY):
        weight, expanded = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        if weight.quantization is not None and _same_quantization(weight.quantization, expanded.quantization):
            weight.quantization = None
    packed = _pack(model)
    return packed if len(packed) < len(tflite_bytes) else tflite_bytes


def _same_quantization(a, b):
    if b is None:
        return False

    def values(q, field):
        return np.asarray([] if getattr(q, field) is None else getattr(q, field))

    same = all(np.array_equal(values(a, f), values(b, f)) for f in ("scale", "zeroPoint", "min", "max"))
    return same and a.quantizedDimension == b.quantizedDimension and a.details is None and b.details is None


def narrowest_sparse_indices(tflite_bytes):
    """Re-encodes each `DENSIFY`-expanded sparse weight along the axis that
    gives the smallest index arrays. The converter always compresses the
    last axis (a conv kernel's input channels), whose indices are uint16
    once it has more than 256 entries; compressing another axis (the
    output channels, with the rest of the axes as the outer order, which
    the format's `traversal_order` describes) keeps them uint8 where that
    axis has at most 256 entries: ResNet-50's 1x1 convs from 512 or 1024
    channels down to 128 or 256. The same values are stored (zeros the
    converter kept included); weights on TFLite's sparse FullyConnected
    kernel (no `DENSIFY`) keep the layout that kernel reads.

    Returns:
        The rewritten file if it is smaller, every expanded weight comes out
        identical (checked by running the builtin `DENSIFY`) and the default
        interpreter runs it, else the input itself.
    """
    schema, flatbuffer_utils = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    graph = model.subgraphs[0]
    ops = [
        op for op in _ops(model, graph, schema.BuiltinOperator.DENSIFY)
        if _compressed(graph.tensors[op.inputs[0]]) and _numpy_type(graph.tensors[op.inputs[0]].type) is not None
    ]
    if not ops:
        return tflite_bytes
    weights = [graph.tensors[op.inputs[0]] for op in ops]
    expanded = [int(op.outputs[0]) for op in ops]
    try:
        values = tflite_runner.tensor_values(tflite_bytes, expanded)
        patterns = _stored_patterns(model, weights, expanded)
    except (RuntimeError, ValueError):  # a graph the builtin kernels can't run on zeros: keep its layout
        return tflite_bytes
    changed = False
    for weight, dense, pattern in zip(weights, values, patterns):
        cost = {axis: _csr_bytes(dense.shape, int(pattern.sum()), axis) for axis in range(dense.ndim)}
        axis = min(cost, key=cost.get)
        if cost[axis] >= sum(_index_bytes(level) for level in weight.sparsity.dimMetadata):
            continue
        weight.sparsity, kept = _csr_along(dense, pattern, axis)
        model.buffers[weight.buffer].data = np.frombuffer(kept.tobytes(), np.uint8)
        changed = True
    if not changed:
        return tflite_bytes
    packed = _pack(model)
    if len(packed) >= len(tflite_bytes) or not _expands_to(packed, expanded, values):
        return tflite_bytes
    return packed


def _expands_to(tflite_bytes, expanded, values):
    """Whether the builtin `DENSIFY` ops give `values` and the default
    interpreter runs the file."""
    try:
        after = tflite_runner.tensor_values(tflite_bytes, expanded)
    except (RuntimeError, ValueError):
        return False
    same = all(np.array_equal(a, b) for a, b in zip(values, after))
    return same and tflite_runner.default_interpreter_error(tflite_bytes) is None


def _compressed(tensor):
    """Whether a weight is stored in the sparse format without blocks."""
    return tensor.sparsity is not None and (tensor.sparsity.blockMap is None or len(tensor.sparsity.blockMap) == 0)


def _numpy_type(tensor_type):
    schema, _ = _schema()
    return {
        schema.TensorType.FLOAT32: np.float32,
        schema.TensorType.FLOAT16: np.float16,
        schema.TensorType.INT8: np.int8,
        schema.TensorType.UINT8: np.uint8,
    }.get(tensor_type)


def _stored_patterns(model, weights, expanded):
    """Where each sparse weight stores a value (a zero it stores included):
    the same file with every stored value set to 1, expanded."""
    ones = copy.deepcopy(model)
    for weight in weights:
        dtype = np.dtype(_numpy_type(weight.type))
        count = len(ones.buffers[weight.buffer].data) // dtype.itemsize
        ones.buffers[weight.buffer].data = np.frombuffer(np.ones(count, dtype).tobytes(), np.uint8)
    return [v != 0 for v in tflite_runner.tensor_values(_pack(ones), expanded)]


def _index_bytes(level):
    if level.arrayIndices is None:
        return 0
    return level.arrayIndices.values.nbytes + level.arraySegments.values.nbytes


def _narrowest(values):
    """(`SparseIndexVector` type, table) of the narrowest vector for `values`."""
    schema, _ = _schema()
    top = int(np.max(values, initial=0))
    for kind, table, dtype in (
        (schema.SparseIndexVector.Uint8Vector, schema.Uint8VectorT, np.uint8),
        (schema.SparseIndexVector.Uint16Vector, schema.Uint16VectorT, np.uint16),
        (schema.SparseIndexVector.Int32Vector, schema.Int32VectorT, np.int32),
    ):
        if top <= np.iinfo(dtype).max:
            vector = table()
            vector.values = np.asarray(values).astype(dtype)
            return kind, vector


def _width(top):
    return 1 if top <= np.iinfo(np.uint8).max else 2 if top <= np.iinfo(np.uint16).max else 4


def _csr_bytes(shape, stored, axis):
    """Index and segment bytes of `shape` compressed along `axis`."""
    rows = int(np.prod(shape)) // shape[axis]
    return stored * _width(shape[axis] - 1) + (rows + 1) * _width(stored)


def _csr_along(dense, pattern, axis):
    """(`SparsityParametersT`, stored values): `dense` compressed along
    `axis`, the other axes dense and outer, in their order."""
    schema, _ = _schema()
    order = [a for a in range(dense.ndim) if a != axis] + [axis]
    rows = np.transpose(pattern, order).reshape(-1, dense.shape[axis])
    row, column = np.nonzero(rows)
    kept = np.transpose(dense, order).reshape(rows.shape)[row, column]
    params = schema.SparsityParametersT()
    params.traversalOrder = np.array(order, np.int32)
    params.dimMetadata = []
    for a in order[:-1]:
        level = schema.DimensionMetadataT()
        level.format, level.denseSize = schema.DimensionType.DENSE, dense.shape[a]
        params.dimMetadata.append(level)
    level = schema.DimensionMetadataT()
    level.format = schema.DimensionType.SPARSE_CSR
    segments = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=rows.shape[0]))])
    level.arraySegmentsType, level.arraySegments = _narrowest(segments)
    level.arrayIndicesType, level.arrayIndices = _narrowest(column)
    params.dimMetadata.append(level)
    return params, kept


# The FullyConnected op version TFLite's converter gives a sparse weight in
# float and full-int8 files; the default XNNPack delegate declines it, so
# TFLite's sparse kernel runs.
SPARSE_FULLY_CONNECTED_VERSION = 8


def sparse_weights_to_the_sparse_kernel(tflite_bytes):
    """Gives every FullyConnected op with a sparse weight the sparse-weight
    op version. Dynamic-range int8 files get a later version (12) instead,
    which the default XNNPack delegate takes while reading the sparse
    weight as if it were dense: wrong outputs or a crash (measured, TF 2.21
    / ai-edge-litert 2.3: logits in the thousands, 10 % accuracy on
    CIFAR-10). TFLite's builtin kernels compute the same with either version.

    Returns:
        The file (the input itself if no op needed it).
    """
    schema, flatbuffer_utils = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    graph = model.subgraphs[0]
    versioned = {}  # opcode index -> the same opcode at the sparse version
    for op in _ops(model, graph, schema.BuiltinOperator.FULLY_CONNECTED):
        code = model.operatorCodes[op.opcodeIndex]
        if graph.tensors[op.inputs[1]].sparsity is None or code.version == SPARSE_FULLY_CONNECTED_VERSION:
            continue
        if op.opcodeIndex not in versioned:
            versioned[op.opcodeIndex] = len(model.operatorCodes)
            model.operatorCodes.append(copy.copy(code))
            model.operatorCodes[-1].version = SPARSE_FULLY_CONNECTED_VERSION
        op.opcodeIndex = versioned[op.opcodeIndex]
    if not versioned:
        return tflite_bytes
    return _pack(model)


def _drop_unused_tensors(model, index, graph):
    """Removes the tensors no op, graph input/output or signature reads (the
    dropped DENSIFY outputs, with their per-channel scales) and renumbers."""
    signatures = [d for d in (model.signatureDefs or []) if d.subgraphIndex == index]
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used |= set(op.inputs) | set(op.outputs)
        if op.intermediates is not None:
            used |= set(op.intermediates)
    for signature in signatures:
        used |= {t.tensorIndex for t in (signature.inputs or []) + (signature.outputs or [])}
    used.discard(-1)  # an omitted optional input
    kept = sorted(int(i) for i in used)
    new = {old: i for i, old in enumerate(kept)}
    new[-1] = -1

    def renumber(indices):
        return np.array([new[int(i)] for i in indices], np.int32)

    graph.tensors = [graph.tensors[i] for i in kept]
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    for op in graph.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        if op.intermediates is not None:
            op.intermediates = renumber(op.intermediates)
    for signature in signatures:
        for t in (signature.inputs or []) + (signature.outputs or []):
            t.tensorIndex = new[t.tensorIndex]


def _ops(model, graph, builtin_code):
    """The graph's operators of one builtin kind, in graph order."""
    return [op for op in graph.operators if _opcode(model, op) == builtin_code]


def dense_where_sparse_is_slower(tflite_bytes, dense_bytes):
    """Stores a FullyConnected weight dense where TFLite's sparse kernel
    would run slower than XNNPack's dense one: where the layer multiplies
    more than one row per sample (a Dense layer over tokens or pixels, e.g.
    an MLP-Mixer's: 1.26x dense with every weight sparse, measured). The
    sparse kernel is a matrix-vector product; several rows are a matrix
    product, which the dense GEMM does far better. `dense_bytes`: the same
    model converted without the sparse format, whose weights are copied.

    Returns:
        `(tflite_bytes, rows)`: the rewritten file and, per weight stored
        dense, `{"name", "rows"}`.
    """
    schema, flatbuffer_utils = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    dense = flatbuffer_utils.convert_bytearray_to_object(bytearray(dense_bytes))
    graph, dense_graph = model.subgraphs[0], dense.subgraphs[0]
    fully_connected = schema.BuiltinOperator.FULLY_CONNECTED
    ops, dense_ops = _ops(model, graph, fully_connected), _ops(dense, dense_graph, fully_connected)
    if len(ops) != len(dense_ops):
        return tflite_bytes, []
    sparse = [(op, dense_op) for op, dense_op in zip(ops, dense_ops) if graph.tensors[op.inputs[1]].sparsity is not None]
    if not sparse:
        return tflite_bytes, []
    # Input shapes as the graph computes them for one sample (a reshape's
    # static shape may be a placeholder): every row of the input is its.
    inputs = tflite_runner.tensor_values(tflite_bytes, [int(op.inputs[0]) for op, _ in sparse])
    changed = []
    dense_opcode = None
    for (op, dense_op), values in zip(sparse, inputs):
        weight = graph.tensors[op.inputs[1]]
        rows = int(np.prod(values.shape[:-1]))
        if rows <= 1:
            continue
        source = dense_graph.tensors[dense_op.inputs[1]]
        if list(source.shape) != list(weight.shape) or source.type != weight.type:
            continue
        weight.sparsity = None
        model.buffers[weight.buffer].data = dense.buffers[source.buffer].data
        # The op takes the dense file's version: XNNPack declines the sparse
        # FullyConnected version (8) even with a dense weight (measured).
        if dense_opcode is None:
            dense_opcode = len(model.operatorCodes)
            model.operatorCodes.append(dense.operatorCodes[dense_op.opcodeIndex])
        op.opcodeIndex = dense_opcode
        name = weight.name.decode() if isinstance(weight.name, bytes) else weight.name
        changed.append({"name": name, "rows": rows})
    if not changed:
        return tflite_bytes, []
    return _pack(model), changed


def recorded_ranges(tflite_bytes):
    """`{tensor index: (min, max)}` of the main graph's tensors that carry
    one calibrated range (a calibrated float file, before quantization)."""
    _, flatbuffer_utils = _schema()
    graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes)).subgraphs[0]
    return {
        index: (float(tensor.quantization.min[0]), float(tensor.quantization.max[0]))
        for index, tensor in enumerate(graph.tensors)
        if tensor.quantization is not None and tensor.quantization.min is not None and len(tensor.quantization.min) == 1
    }


def with_ranges(tflite_bytes, ranges):
    """The calibrated file with the main graph's tensors given new ranges
    (`{tensor index: (min, max)}`): what the quantizer then maps to int8."""
    if not ranges:
        return tflite_bytes
    _, flatbuffer_utils = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        tensors[index].quantization.min = np.array([low], np.float32)
        tensors[index].quantization.max = np.array([high], np.float32)
    return _pack(model)
