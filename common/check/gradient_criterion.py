"""The float32 training criterion: each gradient and post-step tensor, as a whole, against float64.

Float32 gradients of a ReLU / max-pool network are discontinuous: where a pre-activation lies within float32
rounding of a kink, a float32 run routes that element's gradient either way. So they are judged per tensor,
norm-wise, against the float64 reference (any framework's; float64 runs agree to 1e-12), and allowed

    ‖g₃₂ − g₆₄‖ ≤ ROUNDING · max(‖g₆₄‖, √n · rms of its group) + kinks

— ``ROUNDING`` is the product's float32 bound (1e-5); ``kinks`` is the float64-measured amount the near-kink
elements behind the tensor can move it (``torch_impl.kinks.kink_allowance``: zero where no kink lies
behind, e.g. the classifier). The floor ``√n · rms`` judges a gradient that cancels to ~0 (a BatchNorm bias
followed, through a linear conv, by a train-mode BatchNorm: exactly 0 in exact arithmetic) by the size of
the gradients around it, not by its own ~1e-17. Post-step weights are judged relative to the step's
size, ``‖w₆₄ − w₀‖`` (the weights themselves hardly move), plus their float32 storage rounding and the
kinks of every step as the momentum carries them (``lr · ((1 + m) · kinks₁ + kinks₂)`` after two steps).
Measured and argued in docs/equivalence.md, "Training mode".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .compare import BOUNDS

ROUNDING = BOUNDS["float32"]
STORAGE = 2.0 ** -23  # a float64 weight stored in float32, then stepped and read back: two roundings


@dataclass(frozen=True)
class Kinks:
    """``torch_impl.kinks.kink_allowance`` of one problem, per step (at the float64 weights that step
    starts from): per canonical key a norm; and the first step's for the input."""

    steps: tuple[Mapping[str, float], ...]
    input_grad: float
    elements: int

    @property
    def grads(self) -> Mapping[str, float]:
        """The first step's (the gradients a train step reports are the first step's)."""
        return self.steps[0]

    def on_weights(self, key: str, lr: float, momentum: float) -> float:
        """How far the kinks of all steps can move ``key``'s weights: step s's gradient enters every later
        update through the momentum buffer, ``lr · Σ_s (1 + m + … + m^(S−s)) · kinks_s``."""
        n = len(self.steps)
        return lr * sum(sum(momentum ** j for j in range(n - s)) * a.get(key, 0.0) for s, a in enumerate(self.steps))


@dataclass(frozen=True)
class NormRow:
    """The worst tensor of one group under the criterion: ``error`` and ``bound`` relative to ``scale``."""

    quantity: str  # input_grad | grad:<group> | weights:<group>
    key: str
    norm: float  # ‖difference‖
    error: float  # ‖difference‖ / scale
    bound: float  # allowed / scale


def _norm(a: np.ndarray) -> float:
    value = float(np.linalg.norm(np.asarray(a, np.float64).ravel()))
    return value if np.isfinite(value) else float("inf")


def _group(key: str) -> str:
    return key.split(".", 1)[0]


def _scales(norms: Mapping[str, float], sizes: Mapping[str, int]) -> dict[str, float]:
    """Per key: max(its own norm, √n · the rms of its group's values)."""
    total: dict[str, list[float]] = {}
    for key, n in norms.items():
        t = total.setdefault(_group(key), [0.0, 0.0])
        t[0] += n * n
        t[1] += sizes[key]
    return {key: max(n, np.sqrt(sizes[key] * total[_group(key)][0] / max(total[_group(key)][1], 1)))
            for key, n in norms.items()}


def _worst_per_group(quantity: str, rows: Sequence[tuple[str, float, float, float]]) -> list[NormRow]:
    """``rows`` = (key, |error|, allowed, scale) → one :class:`NormRow` per group, its worst key by
    error / allowed."""
    worst: dict[str, tuple[str, float, float, float]] = {}
    for key, err, allowed, scale in rows:
        g = _group(key)
        ratio = err / allowed if allowed > 0 else (0.0 if err == 0 else float("inf"))
        if g not in worst or ratio > worst[g][0]:
            worst[g] = (ratio, key, err, scale, allowed)
    return [NormRow(f"{quantity}:{g}", key, err, err / scale, allowed / scale)
            for g, (_, key, err, scale, allowed) in worst.items()]


def judge(runs: Sequence[Mapping], reference: Mapping, before: Mapping[str, np.ndarray], kinks: Kinks,
          lr: float, momentum: float, trainable: Sequence[str]) -> list[NormRow]:
    """Gradients (input and every trainable key) and post-step weights of one float32 run — or of the
    difference of two (``runs`` of length 2, judged against the sum of their allowances: if each is within
    its allowance of float64, their difference is within the sum) — against the float64 ``reference``."""
    n_runs = len(runs)

    def error(get) -> float:
        return _norm(get(runs[0]) - (get(runs[1]) if n_runs == 2 else get(reference)))

    rows: list[NormRow] = []
    ref_in = np.asarray(reference["input_grad"], np.float64)
    scale = max(_norm(ref_in), 1e-300)
    allowed = n_runs * (ROUNDING * scale + kinks.input_grad)
    err = error(lambda r: np.asarray(r["input_grad"], np.float64))
    rows.append(NormRow("input_grad", "input", err, err / scale, allowed / scale))

    keys = [k for k in trainable if k in reference["grads"]]
    sizes = {k: int(np.size(reference["grads"][k])) for k in keys}
    grad_scale = _scales({k: _norm(reference["grads"][k]) for k in keys}, sizes)
    grad_rows = []
    for k in keys:
        s = max(grad_scale[k], 1e-300)
        err = error(lambda r: np.asarray(r["grads"][k], np.float64))
        grad_rows.append((k, err, n_runs * (ROUNDING * s + kinks.grads.get(k, 0.0)), s))
    rows += _worst_per_group("grad", grad_rows)

    steps = {k: np.asarray(reference["after"][k], np.float64) - np.asarray(before[k], np.float64) for k in keys}
    step_scale = _scales({k: _norm(v) for k, v in steps.items()}, sizes)
    weight_rows = []
    for k in keys:
        s = max(step_scale[k], 1e-300)
        storage = STORAGE * _norm(reference["after"][k])
        err = error(lambda r: np.asarray(r["after"][k], np.float64))
        weight_rows.append((k, err, n_runs * (ROUNDING * s + storage + kinks.on_weights(k, lr, momentum)), s))
    rows += _worst_per_group("weights", weight_rows)
    return rows
