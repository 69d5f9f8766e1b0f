"""SA-Net (Zhang & Yang, 2021): torchvision's ResNet / ResNeXt with Shuffle Attention in every bottleneck.

The official ``SABottleneck`` is torchvision's ``Bottleneck`` plus ``sa = sa_layer(planes · 4, groups=64)``
applied after ``bn3``, before the residual add; stem, stages and head are unchanged, so the canonical keys
are the official checkpoint's (``layer1.0.sa.cweight``, ``layer1.0.sa.gn.weight`` ...). The builder is
ResNeXt's (:func:`common.spec.resnext.build`) with ``attention_groups`` set.
"""

from __future__ import annotations

from .resnext import ResNeXtConfig, build

#: Shuffle Attention groups of every official SA-Net model.
ATTENTION_GROUPS = 64

VARIANTS: dict[str, ResNeXtConfig] = {
    "sa_resnet50": ResNeXtConfig((3, 4, 6, 3), groups=1, width_per_group=64, attention_groups=ATTENTION_GROUPS),
    "sa_resnet101": ResNeXtConfig((3, 4, 23, 3), groups=1, width_per_group=64, attention_groups=ATTENTION_GROUPS),
    "sa_resnext50_32x4d": ResNeXtConfig((3, 4, 6, 3), groups=32, width_per_group=4,
                                        attention_groups=ATTENTION_GROUPS),
}

__all__ = ["ATTENTION_GROUPS", "VARIANTS", "build"]
