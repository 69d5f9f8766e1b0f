"""ShuffleNet V2 (Ma et al., 2018) exactly as torchvision builds it — or, with ``routing="even_odd"``,
as Megvii's official code does (:mod:`common.spec.megvii`).

Key names follow torchvision's ``ShuffleNetV2`` (``conv1.0.weight``, ``stage2.0.branch1.0.weight``, ...,
``conv5.0.weight``, ``fc.weight``), so a torchvision ``state_dict`` is a canonical weight set.

Megvii's units (``routing="even_odd"``) route channels differently (:class:`~common.spec.ir.ShuffleV2Block`)
and their strided units keep the input width in the projection branch (``branch1``: ``in -> in``) and give
the main branch (``branch2``) ``out - in`` outputs; torchvision gives each ``out / 2``. From stage 3 on
``in = out / 2``, so only stage 2 differs (x1.0: 24 / 92 against 58 / 58).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from .build_helpers import conv, conv_bn, sequential
from .ir import BatchNorm2d, Linear, MaxPool2d, NetworkSpec, ShuffleV2Block, Stage, V2Routing


@dataclass(frozen=True)
class ShuffleNetV2Config:
    """The two tables torchvision's constructor takes."""

    stages_repeats: tuple[int, int, int] = (4, 8, 4)  # units per stage2..stage4
    stages_out_channels: tuple[int, int, int, int, int] = (24, 116, 232, 464, 1024)  # stem, stage2-4, conv5
    routing: V2Routing = "chunk"  # "even_odd": Megvii's routing and strided-unit widths (module docstring)

    def __post_init__(self) -> None:
        if len(self.stages_repeats) != 3 or len(self.stages_out_channels) != 5:
            raise SpecError("ShuffleNetV2Config expects 3 stage repeats and 5 output channel counts")
        if any(r < 1 for r in self.stages_repeats):
            raise SpecError(f"stage repeats must be >= 1, got {self.stages_repeats}")
        for idx, ch in enumerate(self.stages_out_channels[1:4], start=2):
            if ch % 2:
                raise SpecError(f"stage{idx} channels must be even (split in two branches), got {ch}")


VARIANTS: dict[str, ShuffleNetV2Config] = {
    "shufflenet_v2_x0_5": ShuffleNetV2Config(stages_out_channels=(24, 48, 96, 192, 1024)),
    "shufflenet_v2_x1_0": ShuffleNetV2Config(stages_out_channels=(24, 116, 232, 464, 1024)),
    "shufflenet_v2_x1_5": ShuffleNetV2Config(stages_out_channels=(24, 176, 352, 704, 1024)),
    "shufflenet_v2_x2_0": ShuffleNetV2Config(stages_out_channels=(24, 244, 488, 976, 2048)),
}


def _unit(path: str, in_ch: int, out_ch: int, stride: int, routing: V2Routing = "chunk") -> ShuffleV2Block:
    branch_features = out_ch // 2
    if stride == 1 and in_ch != branch_features * 2:
        raise SpecError(f"layer {path!r}: a stride-1 unit needs in == out channels, got {in_ch}->{out_ch}")
    # widths of the strided unit's two branches: torchvision halves the output, Megvii keeps the input
    proj_out = branch_features if routing == "chunk" else in_ch
    branch1 = None
    if stride > 1:
        branch1 = sequential(
            conv(f"{path}.branch1.0", in_ch, in_ch, 3, stride, groups=in_ch), BatchNorm2d(in_ch),
            *conv_bn(f"{path}.branch1.2", in_ch, proj_out, 1),
        )
    branch2_in = in_ch if stride > 1 else branch_features
    branch2_out = out_ch - proj_out if stride > 1 else branch_features
    if branch2_out < 1:
        raise SpecError(f"layer {path!r}: {out_ch} outputs leave nothing for the main branch after {proj_out} "
                        f"projected channels")
    branch2 = sequential(
        *conv_bn(f"{path}.branch2.0", branch2_in, branch_features, 1),
        *conv_bn(f"{path}.branch2.3", branch_features, branch_features, 3, stride, groups=branch_features,
                 relu=False),
        *conv_bn(f"{path}.branch2.5", branch_features, branch2_out, 1),
    )
    return ShuffleV2Block(in_ch, out_ch, stride, branch1, branch2, routing)


def build(name: str, config: ShuffleNetV2Config, num_classes: int = 1000) -> NetworkSpec:
    stem_ch, *stage_chs, last_ch = config.stages_out_channels
    stages = []
    in_ch = stem_ch
    for idx, (repeats, out_ch) in enumerate(zip(config.stages_repeats, stage_chs), start=2):
        blocks = [_unit(f"stage{idx}.0", in_ch, out_ch, 2, config.routing)]
        blocks += [_unit(f"stage{idx}.{i}", out_ch, out_ch, 1, config.routing) for i in range(1, repeats)]
        stages.append(Stage(f"stage{idx}", tuple(blocks)))
        in_ch = out_ch
    return NetworkSpec(
        name=name,
        family="shufflenet_v2",
        stem=(("conv1", sequential(*conv_bn("conv1.0", 3, stem_ch, 3, 2))), ("maxpool", MaxPool2d(3, 2, 1))),
        stages=tuple(stages),
        head=(("conv5", sequential(*conv_bn("conv5.0", in_ch, last_ch, 1))),),
        fc=Linear(last_ch, num_classes),
    )
