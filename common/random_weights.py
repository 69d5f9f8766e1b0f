"""Reproducible random canonical weights, with non-trivial BatchNorm statistics.

Tests and ``groupnets verify`` need weights nobody has to download. Running statistics are random too,
so eval-mode BatchNorm is not the identity and a layout or epsilon slip shows up in the output.
"""

from __future__ import annotations

import numpy as np

from .ir import NetworkSpec
from .params import canonical_params


def random_weights(spec: NetworkSpec, seed: int = 0, dtype: str | np.dtype = "float32") -> dict[str, np.ndarray]:
    """He-scaled conv / linear weights, BN affine near (1, 0), running mean ~N(0, 0.1²), var ~U(0.5, 1.5).

    Values are drawn in float64 and then cast, so the float32 and float64 sets hold the same numbers.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, p in canonical_params(spec).items():
        if p.role == "num_batches_tracked":
            out[key] = np.array(int(rng.integers(0, 1000)), dtype=np.int64)
            continue
        if p.role == "weight" and len(p.shape) > 1:  # conv / linear
            fan_in = int(np.prod(p.shape[1:]))
            value = rng.standard_normal(p.shape) * np.sqrt(2.0 / fan_in)
        elif p.role == "weight":  # BN gamma
            value = rng.uniform(0.5, 1.5, p.shape)
        elif p.role == "running_var":
            value = rng.uniform(0.5, 1.5, p.shape)
        else:  # biases, running_mean
            value = rng.standard_normal(p.shape) * 0.1
        out[key] = value.astype(dtype)
    return out


def random_input(shape: tuple[int, ...], seed: int = 0, dtype: str | np.dtype = "float32") -> np.ndarray:
    """Unit-normal input (drawn in float64, then cast) in whatever layout ``shape`` says."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
