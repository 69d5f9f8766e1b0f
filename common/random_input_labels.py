"""Reproducible integer class labels for training-mode checks."""

from __future__ import annotations

import numpy as np


def random_labels(batch: int, num_classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=batch).astype(np.int64)
