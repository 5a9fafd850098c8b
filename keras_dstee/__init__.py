"""keras-dstee: dynamic sparse training (DST-EE, RigL, SET, static, GMP, GraNet) for Keras 3.

The public names are here; the code lives in three rooms (ARCHITECTURE.md):
`training/` (callbacks, the optimizer wrapper, methods, schedules),
`structure/` (channel groups, slimming, BatchNormalization) and `deploy/`
(TFLite, SavedModel, ONNX).
"""

import sys as _sys

from keras_dstee import models
from keras_dstee.deploy.export import export_saved_model
from keras_dstee.deploy.export import export_tflite
from keras_dstee.deploy.onnx_export import export_onnx
from keras_dstee.deploy.tflite_runner import evaluate_tflite
from keras_dstee.deploy.xnnpack import xnnpack_sparse_check
from keras_dstee.report import summary
from keras_dstee.structure.batch_norm import recalibrate_batch_norm
from keras_dstee.structure.channels import channel_groups
from keras_dstee.structure.slimming import slim
from keras_dstee.training import methods
from keras_dstee.training.callbacks import DSTEE
from keras_dstee.training.callbacks import GMP
from keras_dstee.training.callbacks import SET
from keras_dstee.training.callbacks import GraNet
from keras_dstee.training.callbacks import RigL
from keras_dstee.training.callbacks import SparseTraining
from keras_dstee.training.callbacks import Static
from keras_dstee.training.distributions import layer_densities
from keras_dstee.training.optimizer import SparseOptimizer
from keras_dstee.training.shrinking import shrink
from keras_dstee.training.wrapping import strip
from keras_dstee.version import __version__

# The module paths of 0.2.0 (a flat folder), so that code importing them
# (`keras_dstee.methods`, `from keras_dstee.optimizer import ...`) still runs.
_MOVED = {
    "training": ("methods", "updates", "distributions", "blocks", "constraints", "control", "wrapping",
                 "optimizer", "channel_sparsity"),
    "structure": ("channels", "slimming", "batch_norm"),
    "deploy": ("export", "onnx_export", "activation_ranges", "tflite_inspection",
               "tflite_rewrite", "tflite_runner", "xnnpack"),
}


def _alias_moved_modules():
    import importlib

    for room, names in _MOVED.items():
        for name in names:
            module = importlib.import_module(f"keras_dstee.{room}.{name}")
            _sys.modules.setdefault(f"keras_dstee.{name}", module)
            globals().setdefault(name, module)
    callbacks = importlib.import_module("keras_dstee.training.callbacks")
    _sys.modules.setdefault("keras_dstee.callback", callbacks)
    globals().setdefault("callback", callbacks)


_alias_moved_modules()

__all__ = [
    "__version__",
    "DSTEE",
    "GMP",
    "GraNet",
    "SET",
    "RigL",
    "SparseOptimizer",
    "SparseTraining",
    "Static",
    "channel_groups",
    "evaluate_tflite",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "layer_densities",
    "methods",
    "models",
    "recalibrate_batch_norm",
    "shrink",
    "slim",
    "strip",
    "summary",
    "xnnpack_sparse_check",
]
