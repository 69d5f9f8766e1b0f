"""ResNeXt (Xie et al., 2017) exactly as torchvision's ``ResNet`` with ``Bottleneck`` builds it.

Key names follow torchvision (``conv1.weight``, ``bn1.*``, ``layer1.0.conv2.weight``,
``layer1.0.downsample.0.weight``, ``fc.*``). Custom block counts, groups and width per group are
accepted, as torchvision's ``ResNet`` class accepts them, so small ResNeXts can be built for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from .build_helpers import conv, sequential
from .ir import BatchNorm2d, Bottleneck, Conv2d, Linear, MaxPool2d, NetworkSpec, ReLU, ShuffleAttention, Stage

EXPANSION = 4  # Bottleneck output = planes * 4


@dataclass(frozen=True)
class ResNeXtConfig:
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)  # bottlenecks per layer1..layer4
    groups: int = 32  # cardinality
    width_per_group: int = 4  # torchvision's base_width
    stem_width: int = 64  # torchvision's inplanes
    #: SA-Net: a ``ShuffleAttention(planes · 4, attention_groups)`` after each block's ``bn3``; None: plain
    attention_groups: int | None = None

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or any(n < 1 for n in self.layers):
            raise SpecError(f"ResNeXt needs four block counts >= 1, got {self.layers}")
        if self.groups < 1 or self.width_per_group < 1 or self.stem_width < 1:
            raise SpecError("ResNeXt groups, width_per_group and stem_width must be >= 1")
        if self.attention_groups is not None and self.attention_groups < 1:
            raise SpecError(f"ResNeXt attention_groups must be >= 1 or None, got {self.attention_groups}")

    def bottleneck_width(self, planes: int) -> int:
        """torchvision: ``int(planes * (base_width / 64.0)) * groups``."""
        return int(planes * (self.width_per_group / 64.0)) * self.groups


VARIANTS: dict[str, ResNeXtConfig] = {
    "resnext50_32x4d": ResNeXtConfig((3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": ResNeXtConfig((3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": ResNeXtConfig((3, 4, 23, 3), groups=64, width_per_group=4),
}


def _bottleneck(path: str, config: ResNeXtConfig, in_ch: int, planes: int, stride: int) -> Bottleneck:
    width = config.bottleneck_width(planes)
    if width < 1:
        raise SpecError(f"layer {path!r}: bottleneck width {width} < 1 (planes={planes})")
    out_ch = planes * EXPANSION
    downsample = None
    if stride != 1 or in_ch != out_ch:
        try:
            downsample = sequential(Conv2d(in_ch, out_ch, 1, stride=stride), BatchNorm2d(out_ch))
        except SpecError as error:
            raise SpecError(f"layer {path!r}.downsample: {error}") from None
    sa = None
    if config.attention_groups is not None:
        try:
            sa = ShuffleAttention(out_ch, config.attention_groups)
        except SpecError as error:
            raise SpecError(f"layer {path!r}.sa: {error}") from None
    return Bottleneck(
        conv1=conv(f"{path}.conv1", in_ch, width, 1), bn1=BatchNorm2d(width),
        conv2=conv(f"{path}.conv2", width, width, 3, stride, groups=config.groups), bn2=BatchNorm2d(width),
        conv3=conv(f"{path}.conv3", width, out_ch, 1), bn3=BatchNorm2d(out_ch),
        downsample=downsample, sa=sa,
    )


def build(name: str, config: ResNeXtConfig, num_classes: int = 1000) -> NetworkSpec:
    stages = []
    in_ch = config.stem_width
    for idx, (blocks, planes) in enumerate(zip(config.layers, (64, 128, 256, 512)), start=1):
        stride = 1 if idx == 1 else 2
        units = [_bottleneck(f"layer{idx}.0", config, in_ch, planes, stride)]
        in_ch = planes * EXPANSION
        units += [_bottleneck(f"layer{idx}.{i}", config, in_ch, planes, 1) for i in range(1, blocks)]
        stages.append(Stage(f"layer{idx}", tuple(units)))
    return NetworkSpec(
        name=name,
        family="resnext" if config.attention_groups is None else "sa_resnet",
        stem=(
            ("conv1", Conv2d(3, config.stem_width, 7, stride=2, padding=3)),
            ("bn1", BatchNorm2d(config.stem_width)),
            ("relu", ReLU()),
            ("maxpool", MaxPool2d(3, 2, 1)),
        ),
        stages=tuple(stages),
        head=(),
        fc=Linear(in_ch, num_classes),
    )
