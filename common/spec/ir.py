"""The framework-free layer IR every network is described in.

A network spec is a tree of frozen dataclasses: leaf *ops* (``Conv2d``, ``BatchNorm2d``, ``Linear``,
``ReLU``, pools, ``ChannelShuffle``) and *containers* (``Sequential`` and the three block kinds) whose
``children()`` name their sub-layers exactly as torchvision's modules do. From this one tree come the
canonical parameter keys and shapes (:mod:`common.spec.params`), the parameter / FLOP summary, the porting
table, and every framework's model: a backend walks the tree and never re-types a channel count.

Numerics are PyTorch's: convolutions and pools pad symmetrically by ``padding`` on every side, pools
round down, BatchNorm uses ``eps=1e-5`` and momentum 0.1 *as the weight of the new batch*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from ..errors import SpecError

ShuffleConvention = Literal["paper", "inverse"]


# --------------------------------------------------------------------------------------------- ops
@dataclass(frozen=True)
class Conv2d:
    """A 2-D convolution, PyTorch semantics: symmetric zero padding, OIHW weight ``(out, in/groups, k, k)``."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = False

    def __post_init__(self) -> None:
        for field_name in ("in_channels", "out_channels", "kernel_size", "stride", "groups"):
            if getattr(self, field_name) < 1:
                raise SpecError(f"Conv2d.{field_name} must be >= 1, got {getattr(self, field_name)}")
        if self.padding < 0:
            raise SpecError(f"Conv2d.padding must be >= 0, got {self.padding}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise SpecError(
                f"Conv2d channels {self.in_channels}->{self.out_channels} are not divisible by "
                f"groups={self.groups}"
            )

    @property
    def is_depthwise(self) -> bool:
        """One group per input channel (channel multiplier ``out/in``); backends may pick a native kernel."""
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.in_channels

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size)


@dataclass(frozen=True)
class BatchNorm2d:
    """BatchNorm with PyTorch's defaults: eps 1e-5, momentum 0.1 = weight of the *new* batch statistic,
    running variance updated with the unbiased batch variance."""

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool2d:
    """Max-pool, PyTorch semantics: padding counts as -inf, output size rounds down."""

    kernel_size: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class AvgPool2d:
    """Average pool, PyTorch semantics: ``count_include_pad=True`` (padded zeros are averaged in)."""

    kernel_size: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class ChannelShuffle:
    """Channel shuffle; see :mod:`common.spec.shuffle` for the two conventions."""

    groups: int
    convention: ShuffleConvention = "paper"


@dataclass(frozen=True)
class Linear:
    """Fully connected layer, PyTorch weight layout ``(out, in)``."""

    in_features: int
    out_features: int
    bias: bool = True


LeafOp = Union[Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, ChannelShuffle, Linear]
Layers = tuple[tuple[str, "Node"], ...]


# ----------------------------------------------------------------------------------------- containers
@dataclass(frozen=True)
class Sequential:
    """Children applied in order; names are ``"0", "1", ...`` like ``torch.nn.Sequential``."""

    layers: tuple["Node", ...]

    def children(self) -> Layers:
        return tuple((str(i), layer) for i, layer in enumerate(self.layers))


@dataclass(frozen=True)
class ShuffleV2Block:
    """torchvision ``InvertedResidual``.

    stride 1: ``x1, x2 = chunk(x, 2)``; ``out = cat(x1, branch2(x2))``.
    stride 2: ``out = cat(branch1(x), branch2(x))``. Then ``channel_shuffle(out, 2)`` (paper direction).
    """

    in_channels: int
    out_channels: int
    stride: int
    branch1: Sequential | None
    branch2: Sequential

    def children(self) -> Layers:
        named: list[tuple[str, Node]] = []
        if self.branch1 is not None:
            named.append(("branch1", self.branch1))
        named.append(("branch2", self.branch2))
        return tuple(named)


@dataclass(frozen=True)
class ShuffleV1Block:
    """ShuffleNet V1 unit (paper Fig. 2b/2c).

    ``branch`` = 1x1 gconv, BN, ReLU, shuffle, 3x3 depthwise (stride), BN, 1x1 gconv, BN.
    stride 1: ``relu(x + branch(x))``. stride 2: ``relu(cat(shortcut(x), branch(x)))`` with ``shortcut`` a
    3x3/2 average pool (shortcut first, as Megvii's reference code concatenates).
    """

    in_channels: int
    out_channels: int
    stride: int
    branch: Sequential
    shortcut: AvgPool2d | None

    def children(self) -> Layers:
        named: list[tuple[str, Node]] = [("branch", self.branch)]
        if self.shortcut is not None:
            named.append(("shortcut", self.shortcut))
        return tuple(named)


@dataclass(frozen=True)
class Bottleneck:
    """torchvision ResNet ``Bottleneck`` (stride on the grouped 3x3): relu(bn3(conv3(...)) + identity)."""

    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    conv3: Conv2d
    bn3: BatchNorm2d
    downsample: Sequential | None

    @property
    def stride(self) -> int:
        return self.conv2.stride

    def children(self) -> Layers:
        named: list[tuple[str, Node]] = [
            ("conv1", self.conv1), ("bn1", self.bn1), ("conv2", self.conv2),
            ("bn2", self.bn2), ("conv3", self.conv3), ("bn3", self.bn3),
        ]
        if self.downsample is not None:
            named.append(("downsample", self.downsample))
        return tuple(named)


Block = Union[ShuffleV2Block, ShuffleV1Block, Bottleneck]
Node = Union[LeafOp, Sequential, Block]


@dataclass(frozen=True)
class Stage:
    """A named run of blocks (``stage2`` / ``layer1``); its blocks are children ``"0", "1", ...``."""

    name: str
    blocks: tuple[Block, ...]

    def children(self) -> Layers:
        return tuple((str(i), block) for i, block in enumerate(self.blocks))


Family = Literal["shufflenet_v1", "shufflenet_v2", "resnext"]


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: ``stem`` → ``stages`` → ``head`` → global mean pool → ``fc``.

    Every name here is a top-level torchvision module name (``conv1``, ``maxpool``, ``stage2``, ``conv5``,
    ``fc`` ...), so walking the tree yields torchvision's ``state_dict`` keys. Diagnostic taps
    (``stage_names``) are ``"stem"``, each stage's name, ``"pre_logits"`` and ``"logits"``.
    """

    name: str
    family: Family
    stem: Layers
    stages: tuple[Stage, ...]
    head: Layers
    fc: Linear
    in_channels: int = 3

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    @property
    def num_features(self) -> int:
        """Width of the pre-logits feature vector."""
        return self.fc.in_features

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ("stem", *(stage.name for stage in self.stages), "pre_logits", "logits")

    def children(self) -> Layers:
        return (*self.stem, *((stage.name, stage) for stage in self.stages), *self.head, ("fc", self.fc))


def children_of(node: object) -> Layers:
    """Named sub-layers of a container, ``()`` for a leaf op."""
    children = getattr(node, "children", None)
    return children() if callable(children) else ()


def iter_leaves(node: object, prefix: str = ""):
    """Yield ``(dotted_name, leaf_op)`` in module-registration (= torch ``state_dict``) order."""
    named = children_of(node)
    if not named:
        yield prefix, node
        return
    for name, child in named:
        yield from iter_leaves(child, f"{prefix}.{name}" if prefix else name)
