"""Test helpers: run one IR node in one framework, on shared weights and input, with caching.

Outputs come back NCHW / float64 via ``common.verify.run_framework`` — the same path users' verify
takes, so the tests exercise the product, not a test-only copy of it.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from common import get_spec, random_input, random_weights
from common.verify import BOUNDS, compare, run_framework

PARTIES = ("torch", "keras", "flax", "numpy")  # numpy = the float64 oracle
PAIRS = tuple(itertools.combinations(PARTIES, 2))


@functools.lru_cache(maxsize=64)
def network_outputs(framework: str, model: str, dtype: str, size: tuple[int, int], num_classes: int = 1000,
                    batch: int = 2) -> dict[str, np.ndarray]:
    spec = get_spec(model, num_classes)
    weights = random_weights(spec, seed=1, dtype="float64")
    x = random_input((batch, 3, *size), seed=2, dtype="float64")
    return run_framework(framework, spec, weights, x, dtype, taps=True)


def assert_close(a: np.ndarray, b: np.ndarray, dtype: str, what: str) -> tuple[float, float]:
    max_abs, max_rel = compare(a, b)
    assert max_rel <= BOUNDS[dtype], f"{what}: max rel {max_rel:.3e} > {BOUNDS[dtype]:.0e} (max |Δ| {max_abs:.3e})"
    return max_abs, max_rel
