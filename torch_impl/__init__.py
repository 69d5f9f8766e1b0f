"""groupnets' PyTorch backend (NCHW): builds any ``common.ir`` node as ``torch.nn`` modules whose
``state_dict`` is torchvision's, and ports canonical weights in and out. Imports only torch, NumPy and
``common``; the public names are the ones ``docs/backend-contract.md`` lists."""

from .blocks import Bottleneck, ShuffleV1Block, ShuffleV2Block
from .bridge import forward_numpy
from .layers import ChannelShuffle, channel_shuffle, channel_split
from .model import Network, build, create_model
from .weights import export_weights, load_weights

DATA_FORMAT = "channels_first"

__all__ = [
    "DATA_FORMAT", "Bottleneck", "ChannelShuffle", "Network", "ShuffleV1Block", "ShuffleV2Block", "build",
    "channel_shuffle", "channel_split", "create_model", "export_weights", "forward_numpy", "load_weights",
]
