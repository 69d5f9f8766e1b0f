"""How two outputs are compared: the product's bounds, the relative error they are stated in, and the
layout change that puts channels-last outputs next to NCHW ones."""

from __future__ import annotations

import numpy as np

from ..errors import GroupnetsError

#: The product's promise, eval mode, relative to the output's max |value|.
BOUNDS: dict[str, float] = {"float32": 1e-5, "float64": 1e-12}


def to_nchw(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array


def to_nhwc(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def within_bound(max_rel: float, bound: float) -> bool:
    """The product's pass rule: finite and at most ``bound`` (NaN / Inf never pass)."""
    return bool(np.isfinite(max_rel)) and max_rel <= bound


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(max |a-b|, max |a-b| / max(|a|, |b|))``; NaN/Inf anywhere → ``inf`` (never passes)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise GroupnetsError(f"output shapes differ: {a64.shape} vs {b64.shape}")
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return float("inf"), float("inf")
    max_abs = float(np.abs(a64 - b64).max()) if a64.size else 0.0
    scale = max(float(np.abs(a64).max(initial=0.0)), float(np.abs(b64).max(initial=0.0)))
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


class WithinBound:
    """Mixin for a result with ``max_rel`` and ``bound`` fields: it passes by :func:`within_bound`."""

    max_rel: float
    bound: float

    @property
    def ok(self) -> bool:
        return within_bound(self.max_rel, self.bound)


class BoundedReport:
    """Mixin for a report holding ``results`` (each :class:`WithinBound`): it passes when it holds at least
    one result and every one passes; :meth:`worst` is the result closest to (or furthest past) its bound."""

    results: list

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def worst(self) -> WithinBound | None:
        return max(self.results, key=lambda r: r.max_rel / r.bound, default=None)
