"""Megvii's official ShuffleNet V1 and V2 (the megvii-model/ShuffleNet-Series repository) as specs.

Megvii released the only ImageNet-trained ShuffleNet V1 weights (3 and 8 groups) and V2 weights, each at
0.5x / 1.0x / 1.5x / 2.0x: twelve configurations, :data:`RELEASED`, named here by groupnets' standard
model names. Megvii's networks use the same layers with the same widths (except V2's stage 2), but route
channels differently:

* V1 shuffles *after* the depthwise conv + BN, in the inverse direction (``ShuffleNetV1Config.order``);
* V2 fuses the shuffle into the next unit's even/odd split, and its strided units keep the input width in
  the projection branch (``ShuffleNetV2Config.routing = "even_odd"``).

:func:`megvii_architecture` builds Megvii's network exactly (groupnets key names). Where a channel
permutation of the weights turns it into the standard model (:mod:`common.spec.correspondence` derives
it from the two specs), a Megvii file loads into the standard model; where none exists, Megvii's network
is a model of its own, registered as ``<standard name>_megvii`` (:data:`VARIANTS`).

Both of Megvii's networks end in ``AvgPool2d(7)``, a global mean only for 224 x 224 inputs; groupnets'
global mean is the same function there and the right one at any other size. Their classifiers have no
bias: canonical weights carry ``fc.bias = 0``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from ..errors import SpecError
from . import shufflenet_v1, shufflenet_v2
from .correspondence import Correspondence, correspondence
from .ir import NetworkSpec

SUFFIX = "_megvii"
RELEASED: tuple[str, ...] = (
    *(f"shufflenet_v1_g{g}_{tag}" for g in (3, 8) for tag in shufflenet_v1.WIDTH_TAGS),
    *(f"shufflenet_v2_{tag}" for tag in shufflenet_v1.WIDTH_TAGS),
)

#: Megvii's architectures that no channel permutation maps onto the standard model, with how they differ
#: (``groupnets list``). Which ones these are is derived by :func:`correspondence`; tests/test_megvii.py
#: checks this table against it (deriving all twelve takes ~2 s, too long for every import).
DIFFERENCES: dict[str, str] = {
    **{f"shufflenet_v1_g8_{tag}{SUFFIX}": "Megvii's V1: shuffle after the depthwise BN, inverse direction "
                                          "(8 groups: no within-group permutation matches it)"
       for tag in ("x0_5", "x1_0", "x1_5")},
    **{f"shufflenet_v2_{tag}{SUFFIX}": "Megvii's V2: even/odd split instead of chunk + shuffle; stage 2's "
                                       "strided unit keeps 24 channels in its projection branch"
       for tag in ("x1_0", "x1_5", "x2_0")},
}


def _megvii_config(standard: str) -> shufflenet_v1.ShuffleNetV1Config | shufflenet_v2.ShuffleNetV2Config:
    check_released(standard)
    if standard.startswith("shufflenet_v1"):
        return replace(shufflenet_v1.VARIANTS[standard], order="megvii")
    return replace(shufflenet_v2.VARIANTS[standard], routing="even_odd")


def standard_name(name: str) -> str:
    """``shufflenet_v2_x1_0_megvii`` → ``shufflenet_v2_x1_0``; a standard name is returned as it is."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def megvii_architecture(standard: str, num_classes: int = 1000) -> NetworkSpec:
    """Megvii's network for the released configuration ``standard``, named ``<standard>_megvii``."""
    return build(standard + SUFFIX, _megvii_config(standard), num_classes)


def build(name: str, config: shufflenet_v1.ShuffleNetV1Config | shufflenet_v2.ShuffleNetV2Config,
          num_classes: int = 1000) -> NetworkSpec:
    module = shufflenet_v1 if isinstance(config, shufflenet_v1.ShuffleNetV1Config) else shufflenet_v2
    return module.build(name, config, num_classes)


@lru_cache(maxsize=None)
def to_standard(standard: str) -> Correspondence | None:
    """The channel correspondence Megvii's ``standard`` network → groupnets' standard model, or None."""
    module = shufflenet_v1 if standard.startswith("shufflenet_v1") else shufflenet_v2
    return correspondence(megvii_architecture(standard), module.build(standard, module.VARIANTS[standard]))


def target_model(name: str) -> str:
    """The registered model a Megvii checkpoint of configuration ``name`` (standard or ``_megvii`` name)
    loads into: the standard model where a correspondence exists, else ``<standard>_megvii``."""
    standard = check_released(name)
    return standard + SUFFIX if standard + SUFFIX in DIFFERENCES else standard


def check_released(name: str) -> str:
    """``name``'s standard name if Megvii released it; else a :class:`SpecError` saying which they did."""
    standard = standard_name(name)
    if standard not in RELEASED:
        raise SpecError(f"{name}: Megvii released weights only for {', '.join(RELEASED)} (and their {SUFFIX} "
                        f"models)")
    return standard


VARIANTS = {name: _megvii_config(standard_name(name)) for name in DIFFERENCES}
