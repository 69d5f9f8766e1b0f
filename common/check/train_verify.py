"""Training-mode equivalence: train-mode forward, loss, gradients, one SGD step, BatchNorm buffers.

Each backend runs ``train_step_numpy`` (see docs/backend-contract.md) on the same weights, input and
labels; everything is compared in the canonical layout. Per-parameter quantities are compared per
*group* (the top-level module: ``conv1``, ``stage2``, ``layer3``, ``fc`` ...) relative to the group's
largest |value|, and the worst key of each group is named, so a mismatch points at its layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..errors import GroupnetsError
from ..spec.params import canonical_params
from ..spec.registry import get_spec
from .backends import DEFAULT_FRAMEWORKS, framework_label, load_backend
from .compare import BOUNDS, BoundedReport, WithinBound, compare, to_nchw, to_nhwc
from .random import random_input, random_labels, random_weights


@dataclass(frozen=True)
class TrainResult(WithinBound):
    model: str
    dtype: str
    a: str
    b: str
    quantity: str  # forward | loss | input_grad | grad:<group> | weights:<group> | buffers:<group> | num_batches_tracked
    worst_key: str
    max_abs: float
    max_rel: float
    bound: float


@dataclass
class TrainReport(BoundedReport):
    results: list[TrainResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Every pair, quantity, figure and bound, for ``groupnets verify --mode train --json``."""
        return {"ok": self.ok, "results": [{**dataclasses.asdict(r), "ok": r.ok} for r in self.results]}

    def format_table(self, failures_only: bool = False) -> str:
        width = max([24] + [len(r.model) + 1 for r in self.results])  # Megvii's names are 28 characters
        lines = [f"{'model':<{width}}{'dtype':<9}{'pair':<30}{'quantity':<22}{'worst key':<36}{'max rel':>10}"
                 f"{'bound':>8}  ok"]
        for r in self.results:
            if failures_only and r.ok:
                continue
            lines.append(f"{r.model:<{width}}{r.dtype:<9}{r.a + ' vs ' + r.b:<30}{r.quantity:<22}{r.worst_key:<36}"
                         f"{r.max_rel:>10.2e}{r.bound:>8.0e}  {'ok' if r.ok else 'FAIL'}")
        worst = self.worst()
        verdict = "all training quantities within bounds" if self.ok else "SOME TRAINING QUANTITIES EXCEED THEIR BOUND"
        if worst is not None:
            verdict += (f" (worst: {worst.model} {worst.dtype} {worst.a} vs {worst.b} {worst.quantity} "
                        f"{worst.worst_key}: {worst.max_rel:.2e} of {worst.bound:.0e})")
        lines.append(verdict)
        return "\n".join(lines)


def group_of(key: str) -> str:
    return key.split(".", 1)[0]


def _grouped(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], keys: Sequence[str]
             ) -> dict[str, tuple[str, float, float]]:
    """Per group: (worst key, max |Δ|, max |Δ| / max |value| over the group)."""
    scale: dict[str, float] = {}
    for key in keys:
        g = group_of(key)
        scale[g] = max(scale.get(g, 0.0), float(np.abs(a[key]).max(initial=0)), float(np.abs(b[key]).max(initial=0)))
    out: dict[str, tuple[str, float, float]] = {}
    for key in keys:
        g = group_of(key)
        delta = np.abs(np.asarray(a[key], np.float64) - np.asarray(b[key], np.float64))
        max_abs = float(delta.max(initial=0)) if np.isfinite(delta).all() else float("inf")
        rel = max_abs / scale[g] if scale[g] > 0 else max_abs
        if g not in out or rel > out[g][2]:
            out[g] = (key, max_abs, rel)
    return out


def run_train_step(framework: str, spec, weights, x_nchw, labels, dtype, lr, momentum, weight_decay,
                   freeze: bool) -> dict:
    backend = load_backend(framework)
    model = backend.build(spec, dtype=dtype, weights=weights)
    if freeze:
        backend.freeze_backbone(model)
    channels_last = backend.DATA_FORMAT != "channels_first"
    x = to_nhwc(x_nchw) if channels_last else x_nchw
    out = backend.train_step_numpy(model, np.ascontiguousarray(x.astype(dtype)), labels, lr=lr,
                                   momentum=momentum, weight_decay=weight_decay)
    out = dict(out)
    if channels_last:
        out["input_grad"] = to_nchw(np.asarray(out["input_grad"]))
    out["after"] = backend.export_weights(model)
    return out


def verify_train(model: str = "shufflenet_v2_x0_5", frameworks: Sequence[str] = DEFAULT_FRAMEWORKS,
                 dtypes: Sequence[str] = ("float32", "float64"), weights: Mapping[str, np.ndarray] | None = None,
                 input_shape: tuple[int, int, int, int] = (4, 3, 128, 128), seed: int = 0, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 1e-4, freeze: bool = False,
                 num_classes: int | None = None, progress: Callable[[str], None] | None = None) -> TrainReport:
    """One train step in every framework; compare forward, loss, input gradient, per-group parameter
    gradients, post-step weights and BatchNorm buffers (``num_batches_tracked`` must match exactly).

    The default input, 4×3×128×128, leaves every BatchNorm at least 4×4×4 = 64 values per channel.
    At 32×32 the last ShuffleNet stage is 1×1, batch statistics average 4 values, and float32 rounding is
    amplified ~5000× by the normalisation itself: torch float32 vs torch float64 then differs by 2e-5
    (logits) / 3e-4 (gradients) — a property of that problem, not of any framework (measured 2026-11-25).
    """
    spec = get_spec(model, num_classes)
    if input_shape[0] < 2:
        raise GroupnetsError("training-mode verify needs a batch of at least 2 (batch statistics)")
    base = weights if weights is not None else random_weights(spec, seed, "float64")
    x = random_input(tuple(input_shape), seed + 1, "float64")
    labels = random_labels(input_shape[0], spec.num_classes, seed + 2)
    report = TrainReport()
    for dtype in dtypes:
        runs = {}
        for fw in frameworks:
            if progress is not None:
                progress(f"{spec.name} {dtype} {fw} (train)")
            runs[fw] = run_train_step(fw, spec, base, x, labels, dtype, lr, momentum, weight_decay, freeze)
        for i, a in enumerate(frameworks):
            for b in frameworks[i + 1:]:
                report.results.extend(compare_train_runs(spec, dtype, framework_label(a), runs[a],
                                                         framework_label(b), runs[b]))
    return report


def train_inputs(spec, input_shape: tuple[int, int, int, int], seed: int = 0):
    """The input and labels :func:`verify_train` uses, for callers that run frameworks themselves."""
    return random_input(tuple(input_shape), seed + 1, "float64"), random_labels(input_shape[0], spec.num_classes, seed + 2)


def compare_train_runs(spec, dtype: str, la: str, ra: dict, lb: str, rb: dict) -> list[TrainResult]:
    """Every training quantity of two :func:`run_train_step` results, as :class:`TrainResult` rows."""
    bound = BOUNDS[dtype]
    params = canonical_params(spec)
    rows: list[TrainResult] = []

    def add(quantity: str, key: str, max_abs: float, max_rel: float) -> None:
        rows.append(TrainResult(spec.name, dtype, la, lb, quantity, key, max_abs, max_rel, bound))

    add("forward", "logits", *compare(ra["logits"], rb["logits"]))
    loss_abs = abs(float(ra["loss"]) - float(rb["loss"]))
    add("loss", "loss", loss_abs, loss_abs / max(abs(float(ra["loss"])), 1e-30))
    add("input_grad", "input", *compare(ra["input_grad"], rb["input_grad"]))
    if set(ra["grads"]) != set(rb["grads"]):
        only = sorted(set(ra["grads"]) ^ set(rb["grads"]))
        add("grad:keys", f"differ: {only[:2]}", float("inf"), float("inf"))
    grad_keys = [k for k in params if k in ra["grads"] and k in rb["grads"]]
    for g, (key, max_abs, rel) in _grouped(ra["grads"], rb["grads"], grad_keys).items():
        add(f"grad:{g}", key, max_abs, rel)
    trained = [k for k, p in params.items() if p.trainable]
    for g, (key, max_abs, rel) in _grouped(ra["after"], rb["after"], trained).items():
        add(f"weights:{g}", key, max_abs, rel)
    stats = [k for k, p in params.items() if p.role in ("running_mean", "running_var")]
    for g, (key, max_abs, rel) in _grouped(ra["after"], rb["after"], stats).items():
        add(f"buffers:{g}", key, max_abs, rel)
    counters = [k for k, p in params.items() if p.role == "num_batches_tracked"]
    bad = [k for k in counters if int(ra["after"][k]) != int(rb["after"][k])]
    add("num_batches_tracked", bad[0] if bad else "all equal", float(len(bad)), float("inf") if bad else 0.0)
    return rows
