"""Training-mode equivalence: train-mode forward, loss, gradients, one SGD step, BatchNorm buffers.

Each backend runs ``train_step_numpy`` (see docs/backend-contract.md) on the same weights, input and
labels; everything is compared in the canonical layout, one row per *group* (the top-level module:
``conv1``, ``stage2``, ``layer3``, ``fc`` ...) naming its worst key, so a mismatch points at its layer.

Two criteria, named in every row. ``elementwise``: max |Δ| / max |value| over the group within the dtype's
bound — every float64 quantity, and the float32 ones that are continuous in the data (train-mode logits,
loss, BatchNorm statistics, counters). ``norm+kinks``: float32 gradients and post-step weights, per tensor
against the float64 reference (:mod:`.gradient_criterion`), for each framework and each pair.
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
from .gradient_criterion import Kinks, judge
from .random import random_input, random_labels, random_weights


@dataclass(frozen=True)
class TrainResult(WithinBound):
    model: str
    dtype: str
    a: str
    b: str
    quantity: str  # forward | loss | input_grad | grad:<group> | weights:<group> | buffers[@last]:<group> | num_batches_tracked
    worst_key: str
    max_abs: float
    max_rel: float
    bound: float
    criterion: str = "elementwise"  # or "norm+kinks" (see the module docstring)


#: The float32 quantities judged elementwise; gradients and post-step weights are judged norm-wise. The
#: BatchNorm statistics are compared after the first step (``buffers:``): after the second
#: (``buffers@last:``, float64 only) they depend on weights the first step's float32 kinks moved (measured:
#: 2.6e-5 elementwise on one seed of the V2 problem).
CONTINUOUS = ("forward", "loss", "num_batches_tracked")  # and every "buffers:<group>"
#: The float64 reference run (float64 runs agree to 1e-12, which the float64 rows check): torch's if run.
REFERENCE = "float64"


@dataclass
class TrainReport(BoundedReport):
    results: list[TrainResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Every pair, quantity, figure and bound, for ``groupnets verify --mode train --json``."""
        return {"ok": self.ok, "results": [{**dataclasses.asdict(r), "ok": r.ok} for r in self.results]}

    def format_table(self, failures_only: bool = False) -> str:
        width = max([24] + [len(r.model) + 1 for r in self.results])  # Megvii's names are 28 characters
        lines = [f"{'model':<{width}}{'dtype':<9}{'pair':<30}{'quantity':<22}{'worst key':<36}{'criterion':<12}"
                 f"{'rel err':>10}{'bound':>10}  ok"]
        for r in self.results:
            if failures_only and r.ok:
                continue
            lines.append(f"{r.model:<{width}}{r.dtype:<9}{r.a + ' vs ' + r.b:<30}{r.quantity:<22}{r.worst_key:<36}"
                         f"{r.criterion:<12}{r.max_rel:>10.2e}{r.bound:>10.2e}  {'ok' if r.ok else 'FAIL'}")
        worst = self.worst()
        verdict = "all training quantities within bounds" if self.ok else "SOME TRAINING QUANTITIES EXCEED THEIR BOUND"
        if worst is not None:
            verdict += (f" (worst: {worst.model} {worst.dtype} {worst.a} vs {worst.b} {worst.quantity} "
                        f"{worst.worst_key}: {worst.max_rel:.2e} of {worst.bound:.2e})")
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
                   freeze: bool, steps: int = 1, shards: int = 1, **options) -> dict:
    """``train_step_numpy`` of ``framework`` on a fresh model; ``shards > 1`` (torch only): the one-process
    reference of that many DistributedDataParallel processes (per-process BatchNorm statistics);
    ``options``: the backend's own (flax: ``mesh``)."""
    backend = load_backend(framework)
    extra = dict(options) if shards == 1 else {**options, "shards": shards}
    model = backend.build(spec, dtype=dtype, weights=weights)
    if freeze:
        backend.freeze_backbone(model)
    channels_last = backend.DATA_FORMAT != "channels_first"
    x = to_nhwc(x_nchw) if channels_last else x_nchw
    out = backend.train_step_numpy(model, np.ascontiguousarray(x.astype(dtype)), labels, lr=lr,
                                   momentum=momentum, weight_decay=weight_decay, steps=steps, **extra)
    out = dict(out)
    if channels_last:
        out["input_grad"] = to_nchw(np.asarray(out["input_grad"]))
    out["after"] = backend.export_weights(model)
    return out


def measure_kinks(spec, weights, x_nchw, labels, freeze: bool, steps: int = 1, lr: float = 0.1,
                  momentum: float = 0.9, weight_decay: float = 1e-4, shards: int = 1) -> Kinks:
    """The float64 kink allowance of this problem, for each of ``steps`` steps at the float64 weights it
    starts from (``torch_impl.kinks``: PyTorch's autograd hooks measure it, whatever frameworks are
    compared — torch must be installed to judge float32 gradients).

    A later step starts from weights the earlier kinks moved (by ``-lr`` times their rerouted gradient), so
    its allowance adds how far that moves its gradients (``carried``, float64, same draws) to its own kinks.
    ``shards``: of the problem of that many DDP processes (:func:`run_train_step`).
    """
    backend = load_backend("torch")

    def model_at(step: int):
        start = weights if step == 0 else run_train_step("torch", spec, weights, x_nchw, labels, "float64", lr,
                                                         momentum, weight_decay, freeze, steps=step,
                                                         shards=shards)["after"]
        model = backend.build(spec, dtype="float64", weights=start)
        if freeze:
            backend.freeze_backbone(model)
        return model

    models = [model_at(step) for step in range(steps)]
    per_step, carried, first = [], {}, None
    for step, model in enumerate(models):
        following = models[step + 1] if step + 1 < steps else None
        found = backend.kink_allowance(model, x_nchw, labels, carry_to=following, lr=lr, shards=shards)
        per_step.append({k: v + carried.get(k, 0.0) for k, v in found["grads"].items()})
        carried = found.get("carried", {})
        first = first or found
    return Kinks(tuple(per_step), first["input_grad"], first["elements"])


def judge_float32(spec, runs: Mapping[str, dict], reference: dict, before: Mapping[str, np.ndarray], kinks: Kinks,
                  lr: float, momentum: float) -> list[TrainResult]:
    """The ``norm+kinks`` rows of float32 runs (label → :func:`run_train_step` result): each against the
    float64 ``reference``, then each pair."""
    trainable = [k for k, p in canonical_params(spec).items() if p.trainable
                 and k in reference["grads"] and all(k in r["grads"] for r in runs.values())]
    rows = []
    labels = list(runs)
    cases = [((a,), REFERENCE) for a in labels] + [((a, b), b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    for names, other in cases:
        for r in judge([runs[n] for n in names], reference, before, kinks, lr, momentum, trainable):
            rows.append(TrainResult(spec.name, "float32", names[0], other, r.quantity, r.key, r.norm, r.error,
                                    r.bound, "norm+kinks"))
    return rows


def verify_train(model: str = "shufflenet_v2_x0_5", frameworks: Sequence[str] = DEFAULT_FRAMEWORKS,
                 dtypes: Sequence[str] = ("float32", "float64"), weights: Mapping[str, np.ndarray] | None = None,
                 input_shape: tuple[int, int, int, int] = (4, 3, 128, 128), seed: int = 0, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 1e-4, freeze: bool = False,
                 num_classes: int | None = None, progress: Callable[[str], None] | None = None,
                 steps: int = 2) -> TrainReport:
    """``steps`` train steps on one batch in every framework; compare the first step's forward, loss,
    input gradient and per-group parameter gradients, and the weights and BatchNorm buffers after the
    last step (``num_batches_tracked`` must match exactly). Two steps by default, because in the first
    step from a zero momentum buffer coupled (PyTorch) and decoupled (AdamW-style, Keras' own
    ``weight_decay``) decay are the same update; in the second they are not.
    Float32 gradients and post-step weights are judged against a float64 run (torch's when torch is
    compared, which also measures the kink allowance) by :mod:`.gradient_criterion`.

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
    runs: dict[str, dict[str, dict]] = {}

    def run(fw: str, dtype: str) -> dict:
        if fw not in runs.setdefault(dtype, {}):
            if progress is not None:
                progress(f"{spec.name} {dtype} {fw} (train)")
            runs[dtype][fw] = run_train_step(fw, spec, base, x, labels, dtype, lr, momentum, weight_decay, freeze,
                                             steps)
        return runs[dtype][fw]

    for dtype in dtypes:
        for fw in frameworks:
            run(fw, dtype)
        for i, a in enumerate(frameworks):
            for b in frameworks[i + 1:]:
                rows = compare_train_runs(spec, dtype, framework_label(a), runs[dtype][a], framework_label(b),
                                          runs[dtype][b])
                report.results.extend(r for r in rows if dtype != "float32" or is_continuous(r.quantity))
        if dtype == "float32":
            reference = run("torch" if "torch" in frameworks else frameworks[0], "float64")
            kinks = measure_kinks(spec, base, x, labels, freeze, steps, lr, momentum, weight_decay)
            report.results.extend(judge_float32(spec, {framework_label(fw): runs[dtype][fw] for fw in frameworks},
                                                reference, base, kinks, lr, momentum))
    return report


def is_continuous(quantity: str) -> bool:
    """Float32 rows judged elementwise (continuous in the data); the rest are judged norm-wise."""
    return quantity in CONTINUOUS or quantity.startswith(("buffers:", "grad:keys"))


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
    for g, (key, max_abs, rel) in _grouped(ra["buffers"], rb["buffers"], stats).items():
        add(f"buffers:{g}", key, max_abs, rel)  # after the first step: continuous in the data
    if dtype != "float32":  # after the last: in float32 they inherit the first step's kinks through the weights
        for g, (key, max_abs, rel) in _grouped(ra["after"], rb["after"], stats).items():
            add(f"buffers@last:{g}", key, max_abs, rel)
    counters = [k for k, p in params.items() if p.role == "num_batches_tracked"]
    bad = [k for k in counters if int(ra["after"][k]) != int(rb["after"][k])]
    add("num_batches_tracked", bad[0] if bad else "all equal", float(len(bad)), float("inf") if bad else 0.0)
    return rows
