"""Cross-framework equivalence: one weight set, one input, every framework, every pair compared.

Backends are loaded by :func:`common.check.backends.load_backend`; outputs are compared by
:mod:`common.check.compare`, in NCHW, relative to the largest |value| of the pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..errors import GroupnetsError
from ..spec.ir import NetworkSpec
from ..spec.registry import get_spec
from .backends import DEFAULT_FRAMEWORKS, framework_label, load_backend
from .compare import BOUNDS, BoundedReport, WithinBound, compare, to_nchw, to_nhwc
from .random import random_input, random_weights


def run_framework(framework: str, node: object, weights: Mapping[str, np.ndarray], x_nchw: np.ndarray,
                  dtype: str, taps: bool = False,
                  on_model: Callable[[ModuleType, object], None] | None = None) -> dict[str, np.ndarray]:
    """Build ``node`` in ``framework``, load ``weights``, run ``x_nchw``; outputs in NCHW, float64.

    ``on_model(backend, model)``, if given, sees the loaded model before it runs (e.g. to inspect it
    without building it a second time)."""
    if framework == "numpy":
        from .oracle import forward
        # the oracle computes in float64, on the same dtype-rounded numbers the frameworks see
        rounded = {k: (v if v.dtype.kind in "iu" else v.astype(dtype)) for k, v in weights.items()}
        return forward(node, rounded, x_nchw.astype(dtype), taps)
    backend = load_backend(framework)
    model = backend.build(node, dtype=dtype, weights=weights)
    if on_model is not None:
        on_model(backend, model)
    x = x_nchw if backend.DATA_FORMAT == "channels_first" else to_nhwc(x_nchw)
    outputs = backend.forward_numpy(model, np.ascontiguousarray(x.astype(dtype)), taps=taps)
    if backend.DATA_FORMAT != "channels_first":
        outputs = {k: to_nchw(v) for k, v in outputs.items()}
    return {k: np.asarray(v) for k, v in outputs.items()}


@dataclass(frozen=True)
class PairResult(WithinBound):
    model: str
    dtype: str
    a: str
    b: str
    tap: str
    max_abs: float
    max_rel: float
    bound: float


@dataclass
class VerifyReport(BoundedReport):
    results: list[PairResult] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        """Every pair, tap, figure and bound, for ``groupnets verify --json``."""
        return {"input_shape": list(self.input_shape), "ok": self.ok,
                "results": [{**dataclasses.asdict(r), "ok": r.ok} for r in self.results]}

    def first_divergence(self, model: str, dtype: str, a: str, b: str) -> str | None:
        """The first tap (stem → logits) of a pair that exceeds its bound: where to start looking."""
        for r in self.results:
            if (r.model, r.dtype, r.a, r.b) == (model, dtype, a, b) and not r.ok:
                return r.tap
        return None

    def format_table(self) -> str:
        width = max([24] + [len(r.model) + 1 for r in self.results])  # Megvii's names are 28 characters
        lines = [f"{'model':<{width}}{'dtype':<9}{'pair':<32}{'tap':<11}{'max |Δ|':>10}{'max rel':>10}"
                 f"{'bound':>8}  ok"]
        for r in self.results:
            pair = f"{r.a} vs {r.b}"
            lines.append(f"{r.model:<{width}}{r.dtype:<9}{pair:<32}{r.tap:<11}{r.max_abs:>10.2e}"
                         f"{r.max_rel:>10.2e}{r.bound:>8.0e}  {'ok' if r.ok else 'FAIL'}")
        worst = self.worst()
        verdict = "all pairs within bounds" if self.ok else "SOME PAIRS EXCEED THEIR BOUND"
        if worst is not None:
            verdict += f" (worst: {worst.model} {worst.dtype} {worst.a} vs {worst.b} {worst.tap}: " \
                       f"{worst.max_rel:.2e} of {worst.bound:.0e})"
        lines.append(verdict)
        return "\n".join(lines)


def verify(model: str | NetworkSpec | object = "shufflenet_v2_x1_0",
           frameworks: Sequence[str] = DEFAULT_FRAMEWORKS,
           dtypes: Sequence[str] = ("float32", "float64"),
           weights: Mapping[str, np.ndarray] | None = None,
           input_shape: tuple[int, int, int, int] = (2, 3, 224, 224),
           seed: int = 0,
           taps: bool = False,
           num_classes: int | None = None,
           progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Run ``model`` in every framework on the same weights and input; compare every pair.

    ``model``: a registered name, a ``NetworkSpec``, or any IR node (a primitive or block; then
    ``input_shape`` must fit it). ``weights``: canonical weights (default: :func:`random_weights`
    with calibrated, jittered BN statistics). ``taps=True`` also compares every stage output, so a
    mismatch points at the first stage that diverges. The input is NCHW; channels-last frameworks get
    it transposed. Each dtype runs every framework from the same float64-drawn numbers. ``progress``,
    if given, is called with a label (``"float32 torch"``) before each framework runs.
    """
    if isinstance(model, (str, NetworkSpec)):
        node = get_spec(model, num_classes)
    else:
        node = model
    name = getattr(node, "name", type(node).__name__)
    for dtype in dtypes:
        if dtype not in BOUNDS:
            raise GroupnetsError(f"unknown dtype {dtype!r}; choose from {', '.join(BOUNDS)}")
    if len(frameworks) < 2:
        raise GroupnetsError("verify needs at least two frameworks to compare")
    base_weights = weights if weights is not None else random_weights(node, seed, "float64")
    x = random_input(tuple(input_shape), seed + 1, "float64")
    report = VerifyReport(input_shape=tuple(input_shape))
    for dtype in dtypes:
        outputs = {}
        for fw in frameworks:
            if progress is not None:
                progress(f"{name} {dtype} {fw}")
            outputs[fw] = run_framework(fw, node, base_weights, x, dtype, taps)
        for i, a in enumerate(frameworks):
            for b in frameworks[i + 1:]:
                for tap in outputs[a]:
                    max_abs, max_rel = compare(outputs[a][tap], outputs[b][tap])
                    report.results.append(PairResult(name, dtype, framework_label(a), framework_label(b), tap,
                                                     max_abs, max_rel, BOUNDS[dtype]))
    return report
