"""ONNX export of a sparse model, through Keras's own `model.export(...,
format="onnx")`.

The kernels are physically zero, so the ONNX initializers keep the masks'
zeros (ONNX has no sparse storage that runtimes execute; a zipped file
shrinks with the sparsity). TensorFlow exports with tf2onnx and PyTorch with
`torch.onnx`, in process. JAX goes through the model's `.keras` file into a
TensorFlow-backend process: Keras's JAX route (jax2onnx 0.17) writes a
MaxPool node that onnxruntime 1.32 rejects ("Unsupported pooling size",
measured), so TensorFlow's route is the one that works for JAX models.
"""

import gzip
import importlib.util
import warnings

import keras

from keras_dstee import arguments
from keras_dstee.deploy import export
from keras_dstee.deploy import quiet
from keras_dstee.deploy import tensorflow_worker
from keras_dstee.structure import slimming

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


def _input_signature(model):
    """A one-input model's input named after its `InputLayer`, as the saved
    model keeps it (`input_layer`), not after the tensor (`keras_tensor_4`,
    a global counter's name, which a loaded or slimmed model does not
    have): one file name for one model, however it was made. None (Keras's
    own signature) otherwise."""
    try:
        (tensor,) = model.inputs
        layer = tensor._keras_history.operation
    except (AttributeError, ValueError, TypeError):
        return None
    return [keras.InputSpec(shape=tensor.shape, dtype=tensor.dtype, name=layer.name)]


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
    arguments.keras_model(model, "export_onnx")
    backend = keras.backend.backend()
    _check_dependencies(backend)
    export.check_output_path(path, ".onnx")
    policy = model.dtype_policy.name
    if policy != "float32":
        raise ValueError(
            f"Keras exports ONNX from float32 models only; this one computes in {policy!r}. "
            "Rebuild it under keras.config.set_dtype_policy('float32') and load its weights."
        )
    if slim:
        model = slimming.slim(model)
    if backend == "jax":
        tensorflow_worker.run(model, "export_onnx", path, {"opset_version": opset_version})
    else:
        export.mark_called(model)
        with quiet.quiet(), warnings.catch_warnings():
            # tf2onnx's own check of a NumPy name, not the user's concern.
            warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
            model.export(
                path, format="onnx", verbose=False, opset_version=opset_version,
                input_signature=_input_signature(model),
            )
    with open(path, "rb") as f:
        data = f.read()
    return {"path": path, "bytes": len(data), "gzip_bytes": len(gzip.compress(data))}

