"""groupnets' Keras 3 backend: channels-last (NHWC) models from the framework-free spec in ``common``.

Imports only ``keras`` (+ NumPy, ``common``) and runs on the TensorFlow, JAX and torch Keras backends;
the one exception is :mod:`keras_impl.inference`, which compiles with the *active* backend's own library
from inside a function (``jax.jit``, ``tf.function``, ``torch.inference_mode``).
"""

from .bridge import forward_numpy, taps_model
from .files import read_file, write_file
from .inference import InferenceFunction, optimize_for_inference
from .layers import (ChannelShuffle, ChannelSplit, GlobalMeanPooling2D, Linear, NegInfPadding2D, ShuffleAttention,
                     TorchBatchNormalization, channel_shuffle, channel_split, keras_name)
from .model import GroupNet, build, create_model, get_layer
from .training import train_step_numpy
from .transfer import feature_extractor, freeze_backbone, is_frozen, reset_classifier, unfreeze
from .weights import export_weights, keras_variables, load_weights, raw_weights

DATA_FORMAT = "channels_last"

__all__ = [
    "DATA_FORMAT", "ChannelShuffle", "ChannelSplit", "GlobalMeanPooling2D", "GroupNet", "Linear", "NegInfPadding2D",
    "InferenceFunction", "ShuffleAttention", "TorchBatchNormalization",
    "build", "channel_shuffle", "channel_split", "create_model", "export_weights", "forward_numpy", "get_layer",
    "keras_name", "keras_variables", "load_weights", "optimize_for_inference", "raw_weights", "taps_model",
    "feature_extractor", "freeze_backbone", "is_frozen", "read_file", "reset_classifier", "train_step_numpy",
    "unfreeze", "write_file",
]
