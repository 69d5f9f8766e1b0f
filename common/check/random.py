"""Reproducible random canonical weights, with non-trivial BatchNorm statistics.

Tests and ``groupnets verify`` need weights nobody has to download. Running statistics are random too,
so eval-mode BatchNorm is not the identity and a layout or epsilon slip shows up in the output.
"""

from __future__ import annotations

import numpy as np

from ..spec.ir import NetworkSpec
from ..spec.params import canonical_params

#: gamma of the BatchNorm that ends each merged branch (see :func:`merge_branch_norms`)
MERGE_GAMMA = (0.1, 0.3)


def merge_branch_norms(spec: NetworkSpec) -> list[str]:
    """The BatchNorm layers whose output is merged with an identity / shortcut path (each block names
    its own: ``bn3`` of a Bottleneck, the last BN of a ShuffleNet V1 branch, of a V2 ``branch2``)."""
    return [f"{stage.name}.{index}.{norm}" for stage in spec.stages for index, block in enumerate(stage.blocks)
            if (norm := block.merged_norm()) is not None]


def random_weights(spec: object, seed: int = 0, dtype: str | np.dtype = "float32",
                   calibrate: bool = True) -> dict[str, np.ndarray]:
    """He-scaled conv / linear weights, BN and GroupNorm affine ~U(0.5, 1.5) / N(0, 0.1²), random running
    statistics; Shuffle Attention's gate weights and biases ~N(0, 1), so its sigmoids are far from the
    constant σ(1) of the official initial values and every gate input matters.

    Why the merge-branch damping: with every gamma ~U(0.5, 1.5), a calibrated random BN-ReLU network is
    chaotic — in exact float64 arithmetic a 1e-7 input perturbation grows 16x (ShuffleNet V2) to 130x
    (ResNeXt-101) by the logits, so *any* float32 implementation, torch vs the exact oracle included,
    differs by up to 1e-4: a property of the test network, not of a framework. Trained residual networks
    are not like that; their branches are small corrections to the identity path (cf. torchvision's
    ``zero_init_residual``). So the BN ending each merged branch gets gamma ~U(0.1, 0.3): amplification
    falls to 3-8x while two different inputs still change the logits by 50-100% (measured 2026-11-25).

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
        if p.role in ("cweight", "cbias", "sweight", "sbias"):  # SA gates: sigmoids far from constant
            value = rng.standard_normal(p.shape)
        elif p.role == "weight" and len(p.shape) > 1:  # conv / linear
            fan_in = int(np.prod(p.shape[1:]))
            value = rng.standard_normal(p.shape) * np.sqrt(2.0 / fan_in)
        elif p.role in ("weight", "gn.weight"):  # BN / GN gamma
            value = rng.uniform(0.5, 1.5, p.shape)
        elif p.role == "running_var":
            value = rng.uniform(0.5, 1.5, p.shape)
        else:  # biases, running_mean
            value = rng.standard_normal(p.shape) * 0.1
        out[key] = value
    if isinstance(spec, NetworkSpec):
        for layer in merge_branch_norms(spec):
            out[f"{layer}.weight"] = rng.uniform(*MERGE_GAMMA, out[f"{layer}.weight"].shape)
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


def random_labels(batch: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Reproducible integer class labels ``(batch,)`` in ``[0, num_classes)``."""
    return np.random.default_rng(seed).integers(0, num_classes, size=batch).astype(np.int64)
