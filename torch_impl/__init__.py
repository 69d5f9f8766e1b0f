"""groupnets' PyTorch backend (NCHW): builds any ``common.spec.ir`` node as ``torch.nn`` modules whose
``state_dict`` is torchvision's, and ports canonical weights in and out. Imports only torch, NumPy and
``common``; the public names are the ones ``docs/backend-contract.md`` lists."""

from .blocks import Bottleneck, ShuffleV1Block, ShuffleV2Block
from .bridge import forward_numpy
from .export import export_onnx
from .files import read_file, write_file
from .inference import InferenceModel, fuse_batch_norm, optimize_for_inference, recommended_mode
from .layers import ChannelShuffle, ShuffleAttention, channel_shuffle, channel_split
from .model import Network, build, create_model
from .kinks import kink_allowance
from .training import train_step_numpy
from .transfer import freeze_backbone, reset_classifier, unfreeze
from .weights import export_weights, load_weights

DATA_FORMAT = "channels_first"

__all__ = [
    "DATA_FORMAT", "Bottleneck", "ChannelShuffle", "InferenceModel", "Network", "ShuffleAttention",
    "ShuffleV1Block", "ShuffleV2Block", "build", "channel_shuffle", "channel_split", "create_model", "export_onnx",
    "export_weights", "forward_numpy", "freeze_backbone", "fuse_batch_norm", "kink_allowance", "load_weights",
    "optimize_for_inference", "read_file", "recommended_mode", "reset_classifier", "train_step_numpy",
    "unfreeze", "write_file",
]
