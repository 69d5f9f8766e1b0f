"""The primitive layers as IR nodes, so each framework builds them exactly as it builds a network.

Padding is PyTorch's symmetric ``kernel // 2`` on every side, whatever the stride.
"""

from __future__ import annotations

from ..errors import SpecError
from .build_helpers import conv, sequential
from .ir import Conv2d, Sequential


def grouped_conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> Conv2d:
    """A grouped convolution; ``groups`` must divide both channel counts."""
    try:
        return Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups, bias)
    except SpecError as error:
        raise SpecError(f"grouped conv: {error}") from None


def depthwise_conv(channels: int, kernel_size: int = 3, stride: int = 1, multiplier: int = 1,
                   bias: bool = False) -> Conv2d:
    """One filter group per input channel, ``multiplier`` outputs each (``groups == in_channels``)."""
    return grouped_conv(channels, channels * multiplier, kernel_size, stride, channels, bias)


def depthwise_separable_conv(in_channels: int, out_channels: int, kernel_size: int = 3,
                             stride: int = 1) -> Sequential:
    """Depthwise ``k×k`` conv (key ``0``) then pointwise 1×1 conv (key ``1``), no bias, no norm.

    Parameters: ``in·k² + in·out`` instead of ``in·out·k²`` (4→8, 3×3: 36 + 32 = 68 vs 288).
    """
    return sequential(depthwise_conv(in_channels, kernel_size, stride), conv("1", in_channels, out_channels, 1))
