"""groupnets' Keras 3 backend: channels-last (NHWC) models from the framework-free spec in ``common``.

Imports only ``keras`` (+ NumPy, ``common``) and runs on the TensorFlow, JAX and torch Keras backends.
"""

from .bridge import forward_numpy, taps_model
from .layers import (ChannelShuffle, ChannelSplit, GlobalMeanPooling2D, Linear, NegInfPadding2D,
                     TorchBatchNormalization, channel_shuffle, channel_split, keras_name)
from .model import GroupNet, build, create_model, get_layer
from .weights import export_weights, keras_variables, load_weights, raw_weights

DATA_FORMAT = "channels_last"

__all__ = [
    "DATA_FORMAT", "ChannelShuffle", "ChannelSplit", "GlobalMeanPooling2D", "GroupNet", "Linear", "NegInfPadding2D",
    "TorchBatchNormalization",
    "build", "channel_shuffle", "channel_split", "create_model", "export_weights", "forward_numpy", "get_layer",
    "keras_name", "keras_variables", "load_weights", "raw_weights", "taps_model",
]
