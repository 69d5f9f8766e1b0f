"""The framework-free layer IR every network is described in.

A network spec is a tree of frozen dataclasses: leaf *ops* (``Conv2d``, ``BatchNorm2d``, ``Linear``,
``ReLU``, pools, ``ChannelShuffle``, ``ShuffleAttention``) and *containers* (``Sequential`` and the three block kinds) whose
``children()`` name their sub-layers exactly as torchvision's modules do. Every node answers for itself
what walkers need (:class:`IRNode`), so a new layer kind is one class here, not a case in each walker.
From this one tree come the
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
#: How a ShuffleNet V2 unit routes channels: see :class:`ShuffleV2Block`.
V2Routing = Literal["chunk", "even_odd"]
ParamRole = Literal["weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                    "cweight", "cbias", "sweight", "sbias", "gn.weight", "gn.bias"]
#: one canonical tensor of a leaf: its role (the key's last part), canonical shape, and whether it is trained
ParamShape = tuple[ParamRole, tuple[int, ...], bool]
Shape = tuple[int, int, int]  # (C, H, W)
Layers = tuple[tuple[str, "IRNode"], ...]


def _pooled(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a window op, PyTorch's rule (symmetric padding, floor)."""
    return (size + 2 * padding - kernel) // stride + 1


class IRNode:
    """What every IR node answers for itself; walkers ask, they never switch on the node's type.

    The defaults describe a weightless leaf of unknown shape behaviour; each node class overrides what
    it knows. (Plain class, not a dataclass: it adds no fields to the frozen dataclasses below.)
    """

    def children(self) -> Layers:
        """Named sub-layers in module-registration (= ``state_dict``) order; ``()`` for a leaf op."""
        return ()

    @property
    def input_channels(self) -> int | None:
        """Channels the node's input must have; None where any count works (ReLU, pools, shuffle)."""
        return None

    def own_params(self) -> tuple[ParamShape, ...]:
        """The leaf's canonical tensors (not its children's), in ``state_dict`` order."""
        return ()

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        """``(C, H, W)`` in → ``((C, H, W)`` out, multiply-adds); the summary's convention (convolutions
        and the classifier count, ``k·k·in/groups`` per output element)."""
        raise TypeError(f"{type(self).__name__} does not say how it changes a shape")

    def merged_norm(self) -> str | None:
        """A block's BatchNorm (relative dotted name) whose output is merged with an identity / shortcut
        path; None for everything else (random test weights damp that BN's gamma)."""
        return None


class _KeepsShape(IRNode):
    """A leaf whose output has its input's shape and costs no multiply-adds (BN, ReLU, shuffle)."""

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        return shape, 0


class _InChannels(IRNode):
    """A node with an ``in_channels`` field (conv, the ShuffleNet units, a network): that is its input's."""

    in_channels: int

    @property
    def input_channels(self) -> int:
        return self.in_channels


def _first_input_channels(children: Layers) -> int | None:
    """Weightless ops keep the channel count, so the first child that knows it decides."""
    return next((c for _, child in children if (c := child.input_channels) is not None), None)


def _trace_chain(children: Layers, shape: Shape) -> tuple[Shape, int]:
    total = 0
    for _, child in children:
        shape, macs = child.trace(shape)
        total += macs
    return shape, total


# --------------------------------------------------------------------------------------------- ops
@dataclass(frozen=True)
class Conv2d(_InChannels):
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

    def own_params(self) -> tuple[ParamShape, ...]:
        return (("weight", self.weight_shape, True),) + ((("bias", (self.out_channels,), True),) if self.bias else ())

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        c, h, w = shape
        oh, ow = (_pooled(s, self.kernel_size, self.stride, self.padding) for s in (h, w))
        return (self.out_channels, oh, ow), oh * ow * self.out_channels * (c // self.groups) * self.kernel_size ** 2


@dataclass(frozen=True)
class BatchNorm2d(_KeepsShape):
    """BatchNorm with PyTorch's defaults: eps 1e-5, momentum 0.1 = weight of the *new* batch statistic,
    running variance updated with the unbiased batch variance."""

    num_features: int
    eps: float = 1e-5
    momentum: float = 0.1

    @property
    def input_channels(self) -> int:
        return self.num_features

    def own_params(self) -> tuple[ParamShape, ...]:
        c = (self.num_features,)
        return (("weight", c, True), ("bias", c, True), ("running_mean", c, False), ("running_var", c, False),
                ("num_batches_tracked", (), False))


@dataclass(frozen=True)
class ReLU(_KeepsShape):
    """ReLU (torchvision's modules use ``inplace=True``; the IR has no in-place notion)."""


@dataclass(frozen=True)
class _Pool2d(IRNode):
    """A square window op with PyTorch's output-size rule (symmetric padding, round down)."""

    kernel_size: int
    stride: int
    padding: int = 0

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        c, h, w = shape
        return (c, *(_pooled(s, self.kernel_size, self.stride, self.padding) for s in (h, w))), 0


@dataclass(frozen=True)
class MaxPool2d(_Pool2d):
    """Max-pool, PyTorch semantics: padding counts as -inf, output size rounds down."""


@dataclass(frozen=True)
class AvgPool2d(_Pool2d):
    """Average pool, PyTorch semantics: ``count_include_pad=True`` (padded zeros are averaged in)."""


@dataclass(frozen=True)
class ChannelShuffle(_KeepsShape):
    """Channel shuffle; see :mod:`common.spec.shuffle` for the two conventions."""

    groups: int
    convention: ShuffleConvention = "paper"


@dataclass(frozen=True)
class Linear(IRNode):
    """Fully connected layer, PyTorch weight layout ``(out, in)``."""

    in_features: int
    out_features: int
    bias: bool = True

    @property
    def input_channels(self) -> int:
        return self.in_features

    def own_params(self) -> tuple[ParamShape, ...]:
        weight: ParamShape = ("weight", (self.out_features, self.in_features), True)
        return (weight,) + ((("bias", (self.out_features,), True),) if self.bias else ())


@dataclass(frozen=True)
class ShuffleAttention(_KeepsShape):
    """Shuffle Attention (Zhang & Yang, SA-Net, ICASSP 2021), the official ``sa_layer``'s numerics.

    The ``channels`` are ``groups`` sub-features of consecutive channels; each splits into two halves of
    ``branch_channels = channels / (2·groups)``. The first half is gated by its global mean
    (``x · σ(cweight · mean(x) + cbias)``), the second by its GroupNorm with one channel per group
    (``x · σ(sweight · gn(x) + sbias)``, eps 1e-5: per sample, group and channel over H × W); the halves are
    concatenated back in place and the result channel-shuffled with 2 groups (paper direction).

    A leaf (its GroupNorm has no forward of its own here): its tensors are ``cweight`` … ``sbias``
    ``(1, branch_channels, 1, 1)`` and ``gn.weight`` / ``gn.bias`` ``(branch_channels,)``, the official keys.
    """

    channels: int
    groups: int = 64
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.channels < 1 or self.groups < 1:
            raise SpecError(f"ShuffleAttention channels and groups must be >= 1, got {self.channels}, {self.groups}")
        if self.channels % (2 * self.groups):
            raise SpecError(f"ShuffleAttention: {self.channels} channels are not divisible by 2 x groups = "
                            f"{2 * self.groups} (each of the {self.groups} groups splits into two equal halves)")

    @property
    def branch_channels(self) -> int:
        """Channels of each half of each group: the length of every parameter vector."""
        return self.channels // (2 * self.groups)

    @property
    def input_channels(self) -> int:
        return self.channels

    def own_params(self) -> tuple[ParamShape, ...]:
        gate = (1, self.branch_channels, 1, 1)
        return (("cweight", gate, True), ("cbias", gate, True), ("sweight", gate, True), ("sbias", gate, True),
                ("gn.weight", (self.branch_channels,), True), ("gn.bias", (self.branch_channels,), True))

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        """Multiply-adds: the two gate affines (``C/2`` on the pooled half, ``C/2 · H · W`` on the
        normalised one) and the two gating products (``C · H · W``). Like BatchNorm elsewhere in the
        summary, GroupNorm's own normalisation is not counted."""
        c, h, w = shape
        return shape, c // 2 + (c // 2) * h * w + c * h * w


LeafOp = Union[Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, ChannelShuffle, Linear, ShuffleAttention]


# ----------------------------------------------------------------------------------------- containers
class _Chain(IRNode):
    """A container whose children run one after the other (``Sequential``, ``Stage``)."""

    @property
    def input_channels(self) -> int | None:
        return _first_input_channels(self.children())

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        return _trace_chain(self.children(), shape)


@dataclass(frozen=True)
class Sequential(_Chain):
    """Children applied in order; names are ``"0", "1", ...`` like ``torch.nn.Sequential``."""

    layers: tuple["Node", ...]

    def children(self) -> Layers:
        return tuple((str(i), layer) for i, layer in enumerate(self.layers))


def _last_norm(branch: Sequential) -> int:
    return max(i for i, layer in enumerate(branch.layers) if isinstance(layer, BatchNorm2d))


@dataclass(frozen=True)
class ShuffleV2Block(_InChannels):
    """A ShuffleNet V2 unit, with the channel routing of either reference.

    ``routing="chunk"`` (torchvision ``InvertedResidual``, the paper): stride 1 ``x1, x2 = chunk(x, 2)``,
    ``out = cat(x1, branch2(x2))``; stride 2 ``out = cat(branch1(x), branch2(x))``; then
    ``channel_shuffle(out, 2)`` (paper direction).

    ``routing="even_odd"`` (Megvii's ShuffleNet-Series code): the shuffle is fused into the *next* unit's
    split — stride 1 passes the even channels through and feeds the odd ones to ``branch2``
    (= ``chunk(channel_shuffle(x, 2, "inverse"), 2)``), ``out = cat(x_even, branch2(x_odd))``; stride 2
    ``out = cat(branch1(x), branch2(x))``; no shuffle after the concat. The two branches of a strided unit
    may then differ in width (Megvii keeps ``in_channels`` in ``branch1``).
    """

    in_channels: int
    out_channels: int
    stride: int
    branch1: Sequential | None
    branch2: Sequential
    routing: V2Routing = "chunk"

    def __post_init__(self) -> None:
        if self.routing not in ("chunk", "even_odd"):
            raise SpecError(f"ShuffleV2Block routing must be 'chunk' or 'even_odd', got {self.routing!r}")

    def children(self) -> Layers:
        named: list[tuple[str, Node]] = []
        if self.branch1 is not None:
            named.append(("branch1", self.branch1))
        named.append(("branch2", self.branch2))
        return tuple(named)

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        c, h, w = shape
        if self.branch1 is None:
            (bc, oh, ow), macs = self.branch2.trace((c // 2, h, w))
            return (c // 2 + bc, oh, ow), macs
        (c1, oh, ow), m1 = self.branch1.trace(shape)
        (c2, _, _), m2 = self.branch2.trace(shape)
        return (c1 + c2, oh, ow), m1 + m2

    def merged_norm(self) -> str:
        return f"branch2.{_last_norm(self.branch2)}"


@dataclass(frozen=True)
class ShuffleV1Block(_InChannels):
    """ShuffleNet V1 unit (paper Fig. 2b/2c).

    ``branch`` = 1x1 gconv, BN, ReLU, shuffle, 3x3 depthwise (stride), BN, 1x1 gconv, BN (the paper's
    order; Megvii's code shuffles after the depthwise BN, in the inverse direction — any order of the
    branch's layers is run as given). stride 1: ``relu(x + branch(x))``. stride 2: ``relu(cat(shortcut(x), branch(x)))`` with ``shortcut`` a
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

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        (bc, oh, ow), macs = self.branch.trace(shape)
        return ((bc if self.shortcut is None else shape[0] + bc), oh, ow), macs

    def merged_norm(self) -> str:
        return f"branch.{_last_norm(self.branch)}"


@dataclass(frozen=True)
class Bottleneck(IRNode):
    """torchvision ResNet ``Bottleneck`` (stride on the grouped 3x3): relu(bn3(conv3(...)) + identity).

    With ``sa`` (SA-Net's ``SABottleneck``): relu(sa(bn3(conv3(...))) + identity).
    """

    conv1: Conv2d
    bn1: BatchNorm2d
    conv2: Conv2d
    bn2: BatchNorm2d
    conv3: Conv2d
    bn3: BatchNorm2d
    downsample: Sequential | None
    sa: ShuffleAttention | None = None

    @property
    def stride(self) -> int:
        return self.conv2.stride

    def children(self) -> Layers:
        named: list[tuple[str, Node]] = [
            ("conv1", self.conv1), ("bn1", self.bn1), ("conv2", self.conv2),
            ("bn2", self.bn2), ("conv3", self.conv3), ("bn3", self.bn3),
        ]
        if self.sa is not None:
            named.append(("sa", self.sa))  # registered before downsample, as the official SABottleneck
        if self.downsample is not None:
            named.append(("downsample", self.downsample))
        return tuple(named)

    @property
    def input_channels(self) -> int:
        return self.conv1.in_channels

    def trace(self, shape: Shape) -> tuple[Shape, int]:
        out, macs = _trace_chain(tuple((n, c) for n, c in self.children() if n != "downsample"), shape)
        return out, macs + (self.downsample.trace(shape)[1] if self.downsample is not None else 0)

    def merged_norm(self) -> str:
        return "bn3"


Block = Union[ShuffleV2Block, ShuffleV1Block, Bottleneck]
Node = Union[LeafOp, Sequential, Block]


@dataclass(frozen=True)
class Stage(_Chain):
    """A named run of blocks (``stage2`` / ``layer1``); its blocks are children ``"0", "1", ...``."""

    name: str
    blocks: tuple[Block, ...]

    def children(self) -> Layers:
        return tuple((str(i), block) for i, block in enumerate(self.blocks))


Family = Literal["shufflenet_v1", "shufflenet_v2", "resnext", "sa_resnet"]


@dataclass(frozen=True)
class NetworkSpec(_InChannels):
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


#: Every IR class, e.g. the whitelist a deserialiser may create (Keras configs).
NODE_TYPES: tuple[type[IRNode], ...] = (Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, ChannelShuffle, Linear,
                                        ShuffleAttention, Sequential, ShuffleV2Block, ShuffleV1Block, Bottleneck, Stage, NetworkSpec)


def children_of(node: object) -> Layers:
    """Named sub-layers of a container, ``()`` for a leaf op."""
    return node.children() if isinstance(node, IRNode) else ()


def iter_leaves(node: object, prefix: str = ""):
    """Yield ``(dotted_name, leaf_op)`` in module-registration (= torch ``state_dict``) order."""
    named = children_of(node)
    if not named:
        yield prefix, node
        return
    for name, child in named:
        yield from iter_leaves(child, f"{prefix}.{name}" if prefix else name)
