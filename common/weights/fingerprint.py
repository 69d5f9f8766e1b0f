"""Which registered model a set of canonical weights belongs to, from its keys and shapes alone.

A file's name says nothing reliable; its tensors do. Every registered model's canonical keys and shapes
are compared with the file's (the classifier's row count is free: it is the number of classes), so a
ResNeXt-50 file passed as a ShuffleNet can be named for what it is instead of listing 600 keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..spec.params import canonical_params
from ..spec.registry import get_spec, list_models
from .heads import infer_num_classes


@dataclass(frozen=True)
class Fit:
    """How a registered model fits a weight set: the keys it lacks, the file's extra keys, mis-shaped keys."""

    model: str
    num_classes: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[str, ...] = field(default=())

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    @property
    def distance(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.wrong_shape)

    def describe(self) -> str:
        return f"{self.model} weights (torchvision / official layout, {self.num_classes} classes)"


def fit(model: str, weights: Mapping[str, object]) -> Fit:
    """``model`` (registered) against ``weights``, re-headed to the weights' class count."""
    classes = infer_num_classes(weights) or 1000
    expected = canonical_params(get_spec(model, classes))
    missing = tuple(k for k in expected if k not in weights)
    unexpected = tuple(k for k in weights if k not in expected)
    wrong = tuple(k for k, p in expected.items() if k in weights and tuple(np.shape(weights[k])) != p.shape)
    return Fit(model, classes, missing, unexpected, wrong)


def fingerprint(weights: Mapping[str, object]) -> list[Fit]:
    """Every registered model, best fit first (exact fits have distance 0)."""
    return sorted((fit(name, weights) for name in list_models()), key=lambda f: (f.distance, f.model))


def matching_models(weights: Mapping[str, object]) -> list[Fit]:
    """The registered models whose keys *and* shapes the weights match exactly."""
    return [f for f in fingerprint(weights) if f.exact]
