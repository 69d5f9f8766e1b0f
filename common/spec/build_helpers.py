"""Small factories the family specs share: they name the layer in any construction error."""

from __future__ import annotations

from ..errors import SpecError
from .ir import BatchNorm2d, Conv2d, ReLU, Sequential


def conv(path: str, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> Conv2d:
    """A bias-free conv with PyTorch's "same-ish" symmetric padding ``kernel // 2``.

    Raises :class:`SpecError` naming ``path`` when the channels do not divide by ``groups``.
    """
    try:
        return Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups)
    except SpecError as error:
        raise SpecError(f"layer {path!r}: {error}") from None


def conv_bn(path: str, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> tuple:
    """``conv, BN[, ReLU]`` as a tuple of layers, for splicing into a ``Sequential``."""
    layers: tuple = (conv(path, in_ch, out_ch, kernel, stride, groups), BatchNorm2d(out_ch))
    return layers + (ReLU(),) if relu else layers


def sequential(*layers) -> Sequential:
    return Sequential(tuple(layers))


def round_half_up(value: float) -> int:
    """Round to nearest, halves up (Python's ``round`` is banker's rounding)."""
    return int(value + 0.5)
