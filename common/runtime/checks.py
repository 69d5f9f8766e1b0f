"""The argument checks every backend applies at its entry points, written once so the three raise the
same errors with the same messages: integer class labels and SGD settings for a training step."""

from __future__ import annotations

import numpy as np


def check_labels(labels: object, batch: int, classes: int) -> np.ndarray:
    """``labels`` as an int64 ``(batch,)`` array of class indices in ``[0, classes)``, else ValueError."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class indices, got dtype {array.dtype}")
    if array.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},) for a batch of {batch}, got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def check_step_hyperparameters(lr: float, momentum: float, weight_decay: float) -> None:
    """SGD settings must be >= 0 (``not value >= 0`` also rejects NaN)."""
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
