"""Megvii's ShuffleNet-Series checkpoints ⇄ canonical weights: key renames, then channel permutations.

A released file is ``{'state_dict': ...}`` of a DataParallel model (``module.`` keys; the PyTorch reader
unwraps both). Its keys follow Megvii's modules:

| Megvii | groupnets (Megvii's architecture, :func:`common.spec.megvii.megvii_architecture`) |
|---|---|
| ``first_conv.{0,1}`` | ``conv1.{0,1}`` |
| ``features.N`` (N counts units over the stages) | ``stage{2,3,4}.{i}`` |
| V1 ``branch_main_1.k`` / ``branch_main_2.k`` | ``branch.k`` / ``branch.(k + 6)`` (the shuffle sits at ``branch.5``) |
| V2 ``branch_main.k`` / ``branch_proj.k`` | ``branch2.k`` / ``branch1.k`` |
| ``conv_last.{0,1}`` (V2) | ``conv5.{0,1}`` |
| ``classifier.0.weight`` (no bias) | ``fc.weight``; ``fc.bias`` = 0 |

That renaming gives the weights of Megvii's own architecture. Where a channel correspondence to the standard
model exists (:func:`common.spec.megvii.to_standard`), the tensors are then permuted into it; otherwise the
weights are those of the registered ``<standard>_megvii`` model. Both steps are exact and invertible:
:func:`to_megvii` gives back Megvii's keys, in Megvii's ``state_dict`` order, with the same values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ..errors import WeightsFileError, WeightsMismatchError
from ..spec import megvii
from ..spec.correspondence import map_weights
from ..spec.params import canonical_params
from ..spec.registry import get_spec
from .heads import infer_num_classes
from .porting import check_weights

#: Megvii's top-level modules → groupnets', in Megvii's registration order.
_TOP = (("first_conv", "conv1"), ("features", None), ("conv_last", "conv5"), ("classifier.0", "fc"))
#: Per unit: (Megvii sub-module, groupnets branch, index offset), in Megvii's registration order.
_UNIT = {
    "shufflenet_v1": (("branch_main_1", "branch", 0), ("branch_main_2", "branch", 6)),
    "shufflenet_v2": (("branch_main", "branch2", 0), ("branch_proj", "branch1", 0)),
}
_FEATURE = re.compile(r"features\.(\d+)\.([a-z_0-9]+)\.(\d+)\.(.+)")
_STAGE = re.compile(r"stage(\d+)\.(\d+)\.(branch\d?)\.(\d+)\.(.+)")
HEAD_KEY = "classifier.0.weight"


def is_megvii_layout(keys) -> bool:
    """Whether state_dict keys are Megvii's (``first_conv`` stem and ``features`` units)."""
    keys = set(keys)
    return "first_conv.0.weight" in keys and any(k.startswith("features.") for k in keys)


def _units(spec) -> list[str]:
    """``stage{s}.{i}`` of every unit, in order: Megvii's ``features.N`` is the N-th."""
    return [f"{stage.name}.{i}" for stage in spec.stages for i in range(len(stage.blocks))]


def _to_canonical_key(key: str, family: str, units: list[str]) -> str | None:
    match = _FEATURE.fullmatch(key)
    if match:
        n, sub, k, role = match.groups()
        for theirs, ours, offset in _UNIT[family]:
            if sub == theirs and int(n) < len(units):
                return f"{units[int(n)]}.{ours}.{int(k) + offset}.{role}"
        return None
    for theirs, ours in _TOP:
        if ours is not None and key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    return None


def _to_megvii_key(key: str, family: str, units: list[str]) -> tuple[tuple, str]:
    """Megvii's key for a canonical one of Megvii's architecture, and where it sorts in their state_dict."""
    match = _STAGE.fullmatch(key)
    if match:
        stage, i, ours, k, role = match.groups()
        n = units.index(f"stage{stage}.{i}")
        rules = [(r, theirs, offset) for r, (theirs, branch, offset) in enumerate(_UNIT[family])
                 if branch == ours and int(k) >= offset]
        r, theirs, offset = max(rules, key=lambda rule: rule[2])
        return (1, n, r), f"features.{n}.{theirs}.{int(k) - offset}.{role}"
    for position, (theirs, ours) in enumerate(_TOP):
        if ours is not None and key.startswith(ours + "."):
            return (position, 0, 0), theirs + key[len(ours):]
    raise WeightsMismatchError(f"{key}: has no place in Megvii's layout")


def _arranged(weights: Mapping[str, object], standard: str, source: str) -> dict:
    """``weights`` renamed into Megvii's architecture for ``standard`` (``fc.bias`` = 0 added), checked
    strictly: keys, shapes (a :class:`WeightsMismatchError` listing every difference)."""
    classes = infer_num_classes(weights, key=HEAD_KEY) or 1000
    spec = megvii.megvii_architecture(standard, classes)
    renamed = _rename_in(weights, spec, source)
    if "fc.bias" in renamed:
        raise WeightsMismatchError(f"{source}: Megvii's classifier has no bias, but the file has one")
    head = np.asarray(renamed.get("fc.weight", np.zeros((classes, 1))))
    renamed["fc.bias"] = np.zeros(classes, head.dtype)
    check_weights(spec, renamed, strict=True, source=source)
    return {key: renamed[key] for key in canonical_params(spec)}


def _released(weights: Mapping[str, object], source: str) -> tuple[str, dict] | None:
    """The released configuration whose Megvii keys and shapes ``weights`` has exactly, with the weights
    arranged for it (:func:`_arranged`); None when none fits."""
    for standard in megvii.RELEASED:
        try:
            return standard, _arranged(weights, standard, source)
        except WeightsMismatchError:
            continue
    return None


def _rename_in(weights: Mapping[str, object], spec, source: str) -> dict:
    units, renamed, unknown = _units(spec), {}, []
    for key, value in weights.items():
        new = _to_canonical_key(key, spec.family, units)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = value
    if unknown:
        raise WeightsMismatchError(f"{source}: keys with no place in Megvii's {spec.name}: {', '.join(unknown[:8])}")
    return renamed


def from_megvii(weights: Mapping[str, np.ndarray], model: str | None = None, source: str = "the weights"
                ) -> tuple[str, dict[str, np.ndarray]]:
    """Megvii-keyed weights → ``(registered model, its canonical weights)``.

    ``model`` (a standard or ``_megvii`` name; None: found from the keys and shapes) names the released
    configuration; the result is for the standard model where a correspondence exists, else for
    ``<standard>_megvii`` (:func:`common.spec.megvii.target_model`).
    """
    named = None if model is None else megvii.standard_name(model)
    if named in megvii.RELEASED:
        try:
            ordered = _arranged(weights, named, source)
        except WeightsMismatchError:
            found = _released(weights, source)
            if found is None:
                raise  # the differences from the configuration asked for
            raise WeightsFileError(f"{source}: holds Megvii's {found[0]} weights (groupnets model "
                                   f"{megvii.target_model(found[0])}), not {model}") from None
        standard = named
    else:
        found = _released(weights, source)
        if found is None:
            raise WeightsFileError(f"{source}: has Megvii ShuffleNet-Series keys but fits none of their released "
                                   f"configurations ({', '.join(megvii.RELEASED)}); name one to see the differences")
        standard, ordered = found
        if model is not None:
            raise WeightsFileError(f"{source}: holds Megvii's {standard} weights (groupnets model "
                                   f"{megvii.target_model(standard)}), not {model}")
    target = megvii.target_model(standard)
    if target.endswith(megvii.SUFFIX):
        return target, ordered
    return target, map_weights(megvii.to_standard(standard), ordered)


def to_megvii(weights: Mapping[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    """Canonical weights of ``model`` (standard or ``_megvii``, a released configuration) → Megvii's keys in
    Megvii's ``state_dict`` order. Megvii's classifier has no bias: a non-zero ``fc.bias`` is refused."""
    standard = megvii.check_released(model)
    classes = infer_num_classes(weights) or 1000
    spec = get_spec(model, classes)
    check_weights(spec, weights, strict=True, source="the weights to export")
    bias = np.asarray(weights["fc.bias"])
    if np.any(bias != 0):
        raise WeightsMismatchError(f"Megvii's classifier has no bias, and fc.bias is not zero (max |b| = "
                                   f"{float(np.abs(bias).max()):.3g}): the Megvii file would compute something else")
    if spec.name.endswith(megvii.SUFFIX):
        theirs = dict(weights)
    else:
        corr = megvii.to_standard(standard)
        if corr is None:
            raise WeightsMismatchError(f"{model}: Megvii's network for this configuration is another architecture "
                                       f"({standard}{megvii.SUFFIX}); these weights cannot be written in its layout")
        theirs = map_weights(corr, weights, inverse=True)
    arch = megvii.megvii_architecture(standard, classes)
    units = _units(arch)
    placed = []
    for i, key in enumerate(canonical_params(arch)):
        if key != "fc.bias":
            order, megvii_key = _to_megvii_key(key, arch.family, units)
            placed.append((order, i, megvii_key, key))
    return {megvii_key: np.asarray(theirs[key]) for _, _, megvii_key, key in sorted(placed)}
