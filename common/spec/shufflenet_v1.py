"""ShuffleNet V1 (Zhang et al., 2017), following the paper.

Unit: 1x1 group conv → BN → ReLU → channel shuffle (paper direction) → 3x3 depthwise (stride) → BN →
1x1 group conv → BN; stride 1 adds the input, stride 2 concatenates a 3x3/2 average pool of the input
(padded zeros counted, as PyTorch's default); then ReLU. The bottleneck is a quarter of the unit's
output; stage 2's first 1x1 conv is not grouped (its input has only the stem's channels).

Keys (torchvision style): ``conv1.{0,1}`` stem conv + BN, ``maxpool``, ``stage{2,3,4}.{i}.branch.{0..7}``
(``0`` gconv, ``1`` BN, ``2`` ReLU, ``3`` shuffle, ``4`` depthwise, ``5`` BN, ``6`` gconv, ``7`` BN),
``stage*.0.shortcut`` (average pool, no weights), ``fc``.

Width rule, for a width multiplier ``s``:
  * stage-2 channels = the paper's 1.0x width for the group count (144/200/240/272/384 for
    g = 1/2/3/4/8) times ``s``, rounded half-up to a multiple of ``4·g`` (so the quarter-width bottleneck
    and both grouped convs divide by ``g``); stages 3 and 4 double it.
  * stem channels = 12 / 24 / 24 / 48 for 0.5x / 1.0x / 1.5x / 2.0x, rounded up to a multiple of ``g``
    (so the first unit's concat branch, stage2 − stem, divides by ``g``).
  This reproduces every Megvii table for g=3 and g=8 exactly (e.g. g=8 0.5x: stem 16, 192/384/768).

``order="megvii"`` builds the unit as Megvii's official code does (:mod:`common.spec.megvii`): the shuffle,
in the inverse direction, after the depthwise conv's BN — ``branch.{0..7}`` = gconv, BN, ReLU, depthwise,
BN, shuffle, gconv, BN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import SpecError
from .build_helpers import conv_bn, round_half_up, sequential
from .ir import AvgPool2d, ChannelShuffle, Linear, MaxPool2d, NetworkSpec, ShuffleV1Block, Stage

PAPER_STAGE2_WIDTH = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}  # Table 1, 1.0x
STEM_WIDTH = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}  # Megvii's stems per width multiplier
WIDTH_TAGS = {"x0_5": 0.5, "x1_0": 1.0, "x1_5": 1.5, "x2_0": 2.0}


@dataclass(frozen=True)
class ShuffleNetV1Config:
    groups: int = 3
    stage_channels: tuple[int, int, int] = (240, 480, 960)  # stage2..stage4 outputs
    stem_channels: int = 24
    stages_repeats: tuple[int, int, int] = (4, 8, 4)
    order: Literal["paper", "megvii"] = "paper"  # where the shuffle sits in the unit (module docstring)

    def __post_init__(self) -> None:
        g = self.groups
        if self.order not in ("paper", "megvii"):
            raise SpecError(f"ShuffleNet V1 order must be 'paper' or 'megvii', got {self.order!r}")
        if g < 1:
            raise SpecError(f"groups must be >= 1, got {g}")
        for idx, ch in enumerate(self.stage_channels, start=2):
            if ch % 4 or (ch // 4) % g:
                raise SpecError(f"stage{idx}: {ch} channels give a bottleneck of {ch / 4:g} that is not "
                                f"divisible by groups={g}")

    @classmethod
    def from_width(cls, groups: int, width: float) -> "ShuffleNetV1Config":
        """The width rule in the module docstring."""
        if groups not in PAPER_STAGE2_WIDTH:
            raise SpecError(f"ShuffleNet V1 groups must be one of {sorted(PAPER_STAGE2_WIDTH)}, got {groups}")
        if width not in STEM_WIDTH:
            raise SpecError(f"ShuffleNet V1 width must be one of {sorted(STEM_WIDTH)}, got {width}")
        unit = 4 * groups
        stage2 = round_half_up(PAPER_STAGE2_WIDTH[groups] * width / unit) * unit
        stem = math.ceil(STEM_WIDTH[width] / groups) * groups
        return cls(groups, (stage2, 2 * stage2, 4 * stage2), stem)


VARIANTS: dict[str, ShuffleNetV1Config] = {
    f"shufflenet_v1_g{g}_{tag}": ShuffleNetV1Config.from_width(g, width)
    for g in PAPER_STAGE2_WIDTH
    for tag, width in WIDTH_TAGS.items()
}


def _unit(path: str, in_ch: int, out_ch: int, stride: int, groups: int, first_groups: int,
          order: str = "paper") -> ShuffleV1Block:
    mid = out_ch // 4
    branch_out = out_ch - in_ch if stride == 2 else out_ch
    if stride == 1 and in_ch != out_ch:
        raise SpecError(f"layer {path!r}: a stride-1 unit needs in == out channels, got {in_ch}->{out_ch}")
    pointwise = conv_bn(f"{path}.branch.0", in_ch, mid, 1, groups=first_groups)
    if order == "paper":
        depthwise = conv_bn(f"{path}.branch.4", mid, mid, 3, stride, groups=mid, relu=False)
        middle = (ChannelShuffle(groups), *depthwise)
    else:  # Megvii: depthwise conv + BN first, then the inverse-direction shuffle
        depthwise = conv_bn(f"{path}.branch.3", mid, mid, 3, stride, groups=mid, relu=False)
        middle = (*depthwise, ChannelShuffle(groups, "inverse"))
    branch = sequential(
        *pointwise, *middle,
        *conv_bn(f"{path}.branch.6", mid, branch_out, 1, groups=groups, relu=False),
    )
    shortcut = AvgPool2d(3, 2, 1) if stride == 2 else None
    return ShuffleV1Block(in_ch, out_ch, stride, branch, shortcut)


def build(name: str, config: ShuffleNetV1Config, num_classes: int = 1000) -> NetworkSpec:
    g = config.groups
    stages = []
    in_ch = config.stem_channels
    for idx, (repeats, out_ch) in enumerate(zip(config.stages_repeats, config.stage_channels), start=2):
        first_groups = 1 if idx == 2 else g
        blocks = [_unit(f"stage{idx}.0", in_ch, out_ch, 2, g, first_groups, config.order)]
        blocks += [_unit(f"stage{idx}.{i}", out_ch, out_ch, 1, g, g, config.order) for i in range(1, repeats)]
        stages.append(Stage(f"stage{idx}", tuple(blocks)))
        in_ch = out_ch
    return NetworkSpec(
        name=name,
        family="shufflenet_v1",
        stem=(("conv1", sequential(*conv_bn("conv1.0", 3, config.stem_channels, 3, 2))),
              ("maxpool", MaxPool2d(3, 2, 1))),
        stages=tuple(stages),
        head=(),
        fc=Linear(in_ch, num_classes),
    )
