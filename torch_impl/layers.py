"""IR leaf ops → ``torch.nn`` modules, plus the two tensor functions (channel shuffle / split) and
Shuffle Attention.

Each leaf maps to the stock PyTorch module with the IR's numbers, so ``state_dict`` keys and layouts are
torchvision's and a torchvision checkpoint loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from common.spec import ir
from common.spec.shuffle import shuffle_view


def channel_shuffle(x: torch.Tensor, groups: int, convention: str = "paper") -> torch.Tensor:
    """Permute channels (dim 1) as :mod:`common.spec.shuffle` defines.

    ``"paper"`` views C as ``(g, C/g)``, ``"inverse"`` as ``(C/g, g)``; then transpose and flatten.
    ``unflatten``/``flatten`` never mention N, H or W, so dynamic batch/spatial sizes export cleanly.
    """
    a, b = shuffle_view(int(x.shape[1]), groups, convention)  # validates; SpecError is a ValueError
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # Same permutation on the NHWC storage, so the result stays channels-last: the NCHW recipe
        # below would write an NCHW tensor, and every later op would pay a layout conversion
        # (ShuffleNet V1 g3, batch 32: 200 -> see docs/performance.md).
        nhwc = x.permute(0, 2, 3, 1)
        return nhwc.unflatten(3, (a, b)).transpose(3, 4).flatten(3, 4).permute(0, 3, 1, 2)
    return x.unflatten(1, (a, b)).transpose(1, 2).flatten(1, 2)


def concat_shuffle(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat((first, second), 1), 2, "paper")`` in one copy instead of two.

    With two groups the paper shuffle interleaves the halves (``out[2k + i] = half_i[k]``), which is
    stacking them on a new axis right after the channels. The values are the same, bit for bit; only
    the number of passes over memory changes (ShuffleNet V2's every unit). Keeps channels-last storage.
    """
    if first.shape != second.shape:
        raise ValueError(f"concat_shuffle needs equal halves, got {tuple(first.shape)} and {tuple(second.shape)}")
    if first.dim() == 4 and not first.is_contiguous() and first.is_contiguous(memory_format=torch.channels_last):
        nhwc = torch.stack((first.permute(0, 2, 3, 1), second.permute(0, 2, 3, 1)), dim=4)
        return nhwc.flatten(3, 4).permute(0, 3, 1, 2)
    return torch.stack((first, second), dim=2).flatten(1, 2)


def channel_split(x: torch.Tensor, sections: int = 2) -> tuple[torch.Tensor, ...]:
    """``sections`` equal channel slices (views). ``torch.chunk`` alone would silently return unequal
    (or fewer) pieces, so divisibility is checked first."""
    channels = int(x.shape[1])
    if sections < 1 or channels % sections:
        raise ValueError(f"channel split: {channels} channels are not divisible into {sections} equal sections")
    return tuple(torch.chunk(x, sections, dim=1))


class ChannelShuffle(nn.Module):
    """Parameter-free module form of :func:`channel_shuffle` (ShuffleNet V1's ``branch.3``)."""

    def __init__(self, groups: int, convention: str = "paper") -> None:
        super().__init__()
        shuffle_view(groups, groups, convention)  # reject an unknown convention at build time
        self.groups = groups
        self.convention = convention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups, self.convention)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, convention={self.convention!r}"


class ShuffleAttention(nn.Module):
    """Shuffle Attention (SA-Net, Zhang & Yang 2021), numerically and key-for-key the official ``sa_layer``.

    ``channels`` form ``groups`` sub-features of consecutive channels, folded into the batch; each splits
    into a half gated by its global mean (``cweight``, ``cbias``) and a half gated by its per-channel
    GroupNorm (``gn``, then ``sweight``, ``sbias``); the halves are put back and the result is
    channel-shuffled with 2 groups (paper direction). Gates start at the official init (weights 0,
    biases 1: every gate is the constant σ(1)). Drop it into any NCHW network::

        block = nn.Sequential(conv, bn, ShuffleAttention(256, groups=64))
    """

    def __init__(self, channels: int, groups: int = 64, eps: float = 1e-5, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        op = ir.ShuffleAttention(channels, groups, eps)  # SpecError (a ValueError) unless 2·groups | channels
        self.channels, self.groups = channels, groups
        gate = (1, op.branch_channels, 1, 1)
        self.cweight = nn.Parameter(torch.zeros(gate, dtype=dtype))
        self.cbias = nn.Parameter(torch.ones(gate, dtype=dtype))
        self.sweight = nn.Parameter(torch.zeros(gate, dtype=dtype))
        self.sbias = nn.Parameter(torch.ones(gate, dtype=dtype))
        self.gn = nn.GroupNorm(op.branch_channels, op.branch_channels, eps=eps, dtype=dtype)  # one channel per group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"ShuffleAttention({self.channels}, groups={self.groups}) got {c} input channels")
        # not while TorchScript traces: its frozen graph ran this formulation slower (SA-ResNet-50 batch 32
        # 2913 -> 4177 ms), Inductor and eager faster (2695 -> 1742 ms compiled; 2923 -> 2995 eager, with
        # ORT itself 7 % slower in the second run; 2026-12-05)
        if h * w > 1 and x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing():
            return self._channels_last(x)
        first, second = x.reshape(b * self.groups, c // self.groups, h, w).chunk(2, dim=1)
        channel = first * torch.sigmoid(self.cweight * first.mean(dim=(2, 3), keepdim=True) + self.cbias)
        spatial = second * torch.sigmoid(self.sweight * self.gn(second) + self.sbias)
        return channel_shuffle(torch.cat((channel, spatial), dim=1).reshape(b, c, h, w), 2, "paper")

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer on channels-last memory without leaving it. On the ``(b, h·w, c)`` view both
        halves' gates are one per-channel affine map inside the sigmoid, ``x · σ(A·x + B)``: the channel
        half's ``A = 0, B = cweight · mean + cbias``; the spatial half's GroupNorm (one channel per group)
        folded with its gate, ``A = sweight · γ / σ``, ``B = sweight · (β − γ · mean / σ) + sbias``. Two
        statistics passes over h·w, one elementwise pass, and the final 2-group shuffle is one copy. The NCHW recipe's reshape to ``(b·groups, c/groups, h, w)`` copies a channels-last tensor to
        NCHW and back (SA-ResNet-50 batch 8, BN-folded channels-last eager: the 16 layers took 142 of
        549 ms; 2026-12-05)."""
        b, c, h, w = x.shape
        k = c // (2 * self.groups)
        flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: x is channels-last
        mean = flat.mean(dim=1, keepdim=True)  # two passes: var_mean over dim 1 ran 4x slower (Welford)
        centred = flat - mean
        var = (centred * centred).mean(dim=1).reshape(b, self.groups, 2, k)
        mean = mean.reshape(b, self.groups, 2, k)
        vector = lambda p: p.reshape(k)  # noqa: E731  the (1, k, 1, 1) gates
        scale = self.gn.weight * torch.rsqrt(var[:, :, 1] + self.gn.eps)  # (b, groups, k)
        slope = torch.stack((torch.zeros_like(scale), vector(self.sweight) * scale), dim=2)
        offset = torch.stack((vector(self.cweight) * mean[:, :, 0] + vector(self.cbias),
                              vector(self.sweight) * (self.gn.bias - scale * mean[:, :, 1]) + vector(self.sbias)),
                             dim=2)
        gated = flat * torch.sigmoid(torch.addcmul(offset.reshape(b, 1, c), slope.reshape(b, 1, c), flat))
        shuffled = gated.reshape(b, h * w, 2, c // 2).transpose(2, 3).reshape(b, h, w, c)  # channel_shuffle(2)
        return shuffled.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory

    def extra_repr(self) -> str:
        return f"{self.channels}, groups={self.groups}"


def build_leaf(op: ir.LeafOp, dtype: torch.dtype) -> nn.Module:
    """The ``torch.nn`` module for one IR leaf op; every number comes from ``op``."""
    if isinstance(op, ir.Conv2d):
        # Symmetric zero padding on every side is exactly nn.Conv2d's integer ``padding``.
        return nn.Conv2d(op.in_channels, op.out_channels, op.kernel_size, stride=op.stride,
                         padding=op.padding, groups=op.groups, bias=op.bias, dtype=dtype)
    if isinstance(op, ir.BatchNorm2d):
        return nn.BatchNorm2d(op.num_features, eps=op.eps, momentum=op.momentum, dtype=dtype)
    if isinstance(op, ir.ReLU):
        return nn.ReLU(inplace=True)  # as torchvision; only ever applied to a tensor nothing else reads
    if isinstance(op, ir.MaxPool2d):
        return nn.MaxPool2d(op.kernel_size, op.stride, op.padding)  # -inf padding, floor rounding
    if isinstance(op, ir.AvgPool2d):
        return nn.AvgPool2d(op.kernel_size, op.stride, op.padding)  # count_include_pad=True (default)
    if isinstance(op, ir.ChannelShuffle):
        return ChannelShuffle(op.groups, op.convention)
    if isinstance(op, ir.Linear):
        return nn.Linear(op.in_features, op.out_features, bias=op.bias, dtype=dtype)
    if isinstance(op, ir.ShuffleAttention):
        return ShuffleAttention(op.channels, op.groups, op.eps, dtype=dtype)
    raise TypeError(f"not a groupnets IR node: {type(op).__name__}")
