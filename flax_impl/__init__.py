"""groupnets in Flax NNX (NHWC), built from the framework-free spec in ``common/``.

Imports only ``jax`` / ``flax`` (+ NumPy and ``common``). The module tree mirrors the canonical
(torchvision) names: child modules are attributes named ``"0"``, ``"1"``, ``branch2``, ``stage2`` ...
(set with ``setattr``, never ``nnx.List``), so every array's ``".".join(state path)`` is
``"{canonical layer}.{kernel|bias|scale|mean|var|num_batches_tracked}"`` (Shuffle Attention:
``cweight|cbias|sweight|sbias|gn.scale|gn.bias``).

float64 models turn on ``jax_enable_x64`` process-wide when built; float32 models stay float32.
Models start in train mode (like PyTorch); ``model.eval()`` / ``model.train()`` switch BatchNorm.

Also: ``read_file`` / ``write_file`` (``.msgpack``, :mod:`flax_impl.files`), transfer learning
(``freeze_backbone`` / ``unfreeze`` / ``reset_classifier`` / ``trainable_filter``, :mod:`flax_impl.transfer`;
``model.pre_logits(x)``) and the training bridge ``train_step_numpy`` (:mod:`flax_impl.training`).

Convs run on per-shape fast paths under ``jax.jit`` (matmul / shifted multiply-adds / per-group convs, with
eval-mode BatchNorm folded where that pays; :func:`flax_impl.layers.conv_path`); ``set_conv_impl(model,
"lax")`` switches back to plain ``lax.conv`` for comparison. Stored parameters are the same either way.
"""

from .blocks import (Bottleneck, Container, Sequential, ShuffleV1Block, ShuffleV2Block, Stage,
                     build_node, iter_modules, set_conv_impl)
from .bridge import forward_numpy
from .files import read_file, write_file
from .inference import InferenceFunction, optimize_for_inference
from .layers import (AvgPool2d, BatchNorm2d, ChannelShuffle, Conv2d, Linear, MaxPool2d, ReLU, ShuffleAttention,
                     channel_shuffle, channel_split, counter_dtype, resolve_dtype)
from .model import Network, build, create_model
from .training import train_step_numpy
from .transfer import freeze_backbone, reset_classifier, trainable_filter, unfreeze
from .weights import export_weights, load_weights, model_variables, raw_weights

DATA_FORMAT = "channels_last"

__all__ = [
    "AvgPool2d", "BatchNorm2d", "Bottleneck", "ChannelShuffle", "Container", "Conv2d", "DATA_FORMAT",
    "InferenceFunction", "Linear", "MaxPool2d", "Network", "ReLU", "Sequential", "ShuffleAttention", "ShuffleV1Block",
    "ShuffleV2Block", "Stage", "build", "build_node", "channel_shuffle", "channel_split", "counter_dtype",
    "create_model", "export_weights", "forward_numpy", "freeze_backbone", "iter_modules", "load_weights",
    "model_variables", "optimize_for_inference", "raw_weights", "read_file", "reset_classifier",
    "resolve_dtype", "set_conv_impl", "train_step_numpy", "trainable_filter", "unfreeze", "write_file",
]
