"""ONNX export of a sparse model, through Keras's own `model.export(...,
format="onnx")`.

The kernels are physically zero, so the ONNX initializers keep the masks'
zeros (ONNX has no sparse storage that runtimes execute; a zipped file
shrinks with the sparsity). TensorFlow exports with tf2onnx and PyTorch with
`torch.onnx`, in process. JAX goes through the model's `.keras` file into a
TensorFlow-backend subprocess: Keras's JAX route (jax2onnx 0.17) writes a
MaxPool node that onnxruntime 1.32 rejects ("Unsupported pooling size",
measured), so TensorFlow's route is the one that works for JAX models.
"""

import gzip
import importlib.util

import keras
import numpy as np

from keras_dstee import export
from keras_dstee import slimming

_NEEDS = {"tensorflow": ("onnx", "tf2onnx"), "jax": ("onnx", "tf2onnx"), "torch": ("onnx",)}


def _check_dependencies(backend):
    if backend not in _NEEDS:
        raise ValueError(
            f"Keras exports ONNX from the TensorFlow, JAX and PyTorch backends only; this is {backend!r}. "
            "Save the model (`model.save('m.keras')`) and export it under one of those."
        )
    missing = [name for name in _NEEDS[backend] if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export on {backend} needs {', '.join(missing)}: pip install 'keras-dstee[onnx]'"
        )


def _mark_called(model):
    """Keras exports only a model that has been called; a freshly loaded
    one has not. One call on zeros (batch 1) fixes that."""
    if getattr(model, "_called", False):
        return
    try:
        shapes = [tuple(1 if d is None else d for d in t.shape) for t in model.inputs]
        dtypes = [t.dtype for t in model.inputs]
    except (AttributeError, ValueError):
        raise ValueError(
            "This model has never been called and its input shape is unknown (a subclassed model): "
            "call it once on a batch of inputs, then export."
        ) from None
    zeros = [np.zeros(s, d) for s, d in zip(shapes, dtypes)]
    model(zeros[0] if len(zeros) == 1 else zeros, training=False)


def export_onnx(model, path, slim=False, opset_version=None):
    """Exports `model`'s inference function to an ONNX file.

    Runs with ONNX Runtime, OpenVINO or TensorRT. The weights are stored
    dense with the sparse model's zeros kept, so the gzipped file shrinks
    with the sparsity; `slim=True` removes whole channels first (a smaller,
    faster network, see `keras_dstee.slim`). The model itself is not
    modified.

    Args:
        model: a Keras model with a float32 dtype policy, on the TensorFlow,
            JAX or PyTorch backend.
        path: the `.onnx` file to write.
        slim: export `keras_dstee.slim(model)`.
        opset_version: the ONNX opset (None: the exporter's default).

    Returns:
        A dict: `path`, `bytes`, `gzip_bytes`.
    """
    backend = keras.backend.backend()
    _check_dependencies(backend)
    export.check_output_path(path)
    policy = model.dtype_policy.name
    if policy != "float32":
        raise ValueError(
            f"Keras exports ONNX from float32 models only; this one computes in {policy!r}. "
            "Rebuild it under keras.config.set_dtype_policy('float32') and load its weights."
        )
    if slim:
        model = slimming.slim(model)
    if backend == "jax":
        export.run_in_tensorflow(model, ["--onnx", path] + (["--opset", str(opset_version)] if opset_version else []))
    else:
        _mark_called(model)
        model.export(path, format="onnx", verbose=False, opset_version=opset_version)
    with open(path, "rb") as f:
        data = f.read()
    return {"path": path, "bytes": len(data), "gzip_bytes": len(gzip.compress(data))}

