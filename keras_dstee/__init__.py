"""keras-dstee: dynamic sparse training (DST-EE, RigL, SET, static, GMP, GraNet) for Keras 3."""

from keras_dstee import methods
from keras_dstee import models
from keras_dstee.batch_norm import recalibrate_batch_norm
from keras_dstee.callback import DSTEE
from keras_dstee.callback import GMP
from keras_dstee.callback import SET
from keras_dstee.callback import GraNet
from keras_dstee.callback import RigL
from keras_dstee.callback import SparseTraining
from keras_dstee.callback import Static
from keras_dstee.channels import channel_groups
from keras_dstee.distributions import layer_densities
from keras_dstee.export import export_saved_model
from keras_dstee.export import export_tflite
from keras_dstee.onnx_export import export_onnx
from keras_dstee.optimizer import SparseOptimizer
from keras_dstee.report import summary
from keras_dstee.slimming import slim
from keras_dstee.tflite_runner import evaluate_tflite
from keras_dstee.version import __version__
from keras_dstee.wrapping import strip
from keras_dstee.xnnpack import xnnpack_sparse_check

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
    "slim",
    "strip",
    "summary",
    "xnnpack_sparse_check",
]
