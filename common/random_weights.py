"""Reproducible random canonical weights, with non-trivial BatchNorm statistics.

Tests and ``groupnets verify`` need weights nobody has to download. Running statistics are random too,
so eval-mode BatchNorm is not the identity and a layout or epsilon slip shows up in the output.
"""

from __future__ import annotations

import numpy as np

from .ir import NetworkSpec
from .params import canonical_params


def random_weights(spec: object, seed: int = 0, dtype: str | np.dtype = "float32",
                   calibrate: bool = True) -> dict[str, np.ndarray]:
    """He-scaled conv / linear weights, BN affine ~U(0.5, 1.5) / N(0, 0.1²), random running statistics.

    With ``calibrate`` (networks only), the running statistics are first set to the batch statistics of
    a random 4×3×64×64 input (via the NumPy oracle; each layer's variances floored at a tenth of its median) and then jittered (mean + N(0, 0.1²)·std, var · U(0.7, 1.4)):
    activations stay near unit scale through 100 layers, as in a trained network, yet eval-mode BN is
    far from the identity. Values are drawn in float64 and then cast, so float32 and float64 sets match.
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
        out[key] = value
    if calibrate and isinstance(spec, NetworkSpec):
        from .oracle import calibrate_batch_norm

        probe = rng.standard_normal((4, spec.in_channels, 64, 64))
        out = calibrate_batch_norm(spec, out, probe)
        for key, p in canonical_params(spec).items():
            if p.role == "running_mean":
                std = np.sqrt(out[key.replace("running_mean", "running_var")])
                out[key] = out[key] + rng.standard_normal(p.shape) * 0.1 * std
            elif p.role == "running_var":
                # floor near-dead channels at a tenth of the layer's median: dividing by ~0 would
                # amplify them 1000x on any other input
                floor = 0.1 * float(np.median(out[key])) + 1e-3
                out[key] = np.maximum(out[key], floor) * rng.uniform(0.7, 1.4, p.shape)
    return {k: (v if v.dtype.kind in "iu" else v.astype(dtype)) for k, v in out.items()}


def random_input(shape: tuple[int, ...], seed: int = 0, dtype: str | np.dtype = "float32") -> np.ndarray:
    """Unit-normal input (drawn in float64, then cast) in whatever layout ``shape`` says."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
