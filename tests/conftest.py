"""Shared fixtures. A framework that fails to import is a test *failure*, never a skip."""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FRAMEWORKS = ("torch", "keras", "flax")


def import_backend(framework: str):
    try:
        return importlib.import_module(f"{framework}_impl")
    except ImportError as error:  # loud: CI must have every framework
        pytest.fail(f"{framework}_impl cannot be imported: {error}", pytrace=False)


@pytest.fixture(params=FRAMEWORKS)
def framework(request) -> str:
    return request.param


@pytest.fixture
def backend(framework):
    return import_backend(framework)


def _names(value: object, matches) -> bool:
    """Whether a framework parameter (a name, or a tuple of names such as a pair) holds a name ``matches``."""
    if isinstance(value, str):
        return matches(value)
    return isinstance(value, tuple) and any(_names(v, matches) for v in value)


def _is_keras(value: object) -> bool:
    return _names(value, lambda name: name == "keras" or name.startswith("keras["))


#: Parameters that name the framework(s) or parties a test runs. Other parameters may hold the word
#: "keras" without running Keras (a file format, a module a child process must not import).
FRAMEWORK_PARAMS = ("framework", "a", "b", "pair")


#: The parties another pytest run computes side by side with this one (comma-separated; ``.ci/test`` sets
#: it for the Keras re-run on torch, which runs beside the one on JAX): tests needing them go last.
CONCURRENT_ENV = "GROUPNETS_CONCURRENT_PARTIES"


def pytest_collection_modifyitems(config, items):
    """A test parametrised with a Keras framework or party is marked ``keras``: ``.ci/test`` re-runs those
    under every Keras backend, unless it is marked ``backend_neutral`` (it uses Keras, but what it proves
    is Keras' own Python: file layouts, the layer-graph walk), which runs on the default backend only.

    Tests that need a party a side-by-side run is still computing (:data:`CONCURRENT_ENV`) move to the end,
    in their order, so they wait for its entries as little as possible (``store.PRODUCING``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("backend_neutral") or callspec is None:
            continue
        if any(_is_keras(callspec.params[name]) for name in FRAMEWORK_PARAMS if name in callspec.params):
            item.add_marker(pytest.mark.keras)
    concurrent = tuple(p for p in os.environ.get(CONCURRENT_ENV, "").split(",") if p)
    if concurrent:
        def needs_concurrent(item) -> bool:
            params = getattr(getattr(item, "callspec", None), "params", {})
            return any(_names(params[name], concurrent.__contains__) for name in FRAMEWORK_PARAMS if name in params)
        items.sort(key=needs_concurrent)  # stable: False (needs nothing from the other run) first


def _model_of(item) -> tuple[str, object]:
    """(test file, ``model`` parameter): the unit after which cached executables are no longer reused."""
    callspec = getattr(item, "callspec", None)
    return (item.module.__name__, callspec.params.get("model") if callspec else None)


def _free_framework_caches() -> None:
    """What a worker keeps after a test: JAX's compile caches (an executable per network structure, dtype
    and shape, for as long as the process lives), Keras' global graph state, and the harness memos."""
    import gc
    import sys

    import harness
    import store
    store.clear_memo()
    harness.network_weights.cache_clear()
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=False)
    gc.collect()  # once: a full collection of a heap holding three frameworks costs ~0.5 s


#: A worker frees its caches at the next change of model once its resident memory has grown this much
#: past what it held after its last free (or past :data:`CACHE_FLOOR_BYTES`, whichever is higher).
#: Relative, because freed memory is reused but rarely returned to the OS: with a fixed 3 GiB limit a
#: worker stayed above it after the first free and freed at every change of model (269 times, 235 s of
#: teardown in the main run of 2026-12-02, then recompiled every small eager op it had cached).
CACHE_GROWTH_BYTES = int(1.5 * 2**30)
CACHE_FLOOR_BYTES = 3 * 2**30
_free_above = CACHE_FLOOR_BYTES
_frees: list[float] = []  # seconds per free, reported at the end (MEMORY_LOG)
_peak_rss = 0
#: One line per worker in the test store: frees, seconds spent freeing, peak resident memory.
MEMORY_LOG = "memory.tsv"


def pytest_runtest_teardown(item, nextitem):
    """Free the caches when a worker has grown and the next test is about another model (or file).

    A CI worker runs about 600 tests in one process. Without this its resident memory grew to 10 GiB by
    the end of the run (two workers on a 24 GiB machine), and a Flax train-step compile then aborted
    (CI, 2026-11-26)."""
    global _free_above, _peak_rss
    if nextitem is not None and _model_of(nextitem) == _model_of(item):
        return
    import time

    import psutil
    rss = psutil.Process().memory_info().rss
    _peak_rss = max(_peak_rss, rss)
    if rss > _free_above:
        start = time.perf_counter()
        _free_framework_caches()
        _frees.append(time.perf_counter() - start)
        _free_above = max(CACHE_FLOOR_BYTES, psutil.Process().memory_info().rss + CACHE_GROWTH_BYTES)


def pytest_sessionfinish(session):
    """Each worker's frees and peak memory, for ``.ci/test``'s summary (only with a test store)."""
    import store
    path = store.log_file(MEMORY_LOG)
    if path is not None and _peak_rss:
        with open(path, "a") as log:
            log.write(f"{len(_frees)}\t{sum(_frees):.1f}\t{_peak_rss / 2**30:.2f}\n")
