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


def _is_keras(value: object) -> bool:
    if isinstance(value, str):
        return value == "keras" or value.startswith("keras[")
    return isinstance(value, tuple) and any(_is_keras(v) for v in value)


def pytest_collection_modifyitems(config, items):
    """Anything parametrised with a Keras framework or party is marked ``keras``: ``.ci/test`` re-runs
    those under every Keras backend."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and any(_is_keras(v) for v in callspec.params.values()):
            item.add_marker(pytest.mark.keras)


def _model_of(item) -> tuple[str, object]:
    """(test file, ``model`` parameter): the unit after which cached executables are no longer reused."""
    callspec = getattr(item, "callspec", None)
    return (item.module.__name__, callspec.params.get("model") if callspec else None)


def _free_framework_caches() -> None:
    """What a worker keeps after a test: JAX's compile caches (an executable per network structure, dtype
    and shape, for as long as the process lives), Keras' global graph state, and the harness memos."""
    import gc
    import sys

    import store
    store.clear_memo()
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=True)
    gc.collect()


#: Resident memory above which a worker frees its caches at the next change of model. Clearing at every
#: change of model made the network tests 25% slower (JAX recompiles every small eager op afterwards);
#: clearing only when a worker has grown past this keeps two workers far below the machine's 24 GiB.
CACHE_LIMIT_BYTES = 3 * 2**30


def pytest_runtest_teardown(item, nextitem):
    """Free the caches when a worker has grown large and the next test is about another model (or file).

    A CI worker runs about 600 tests in one process. Without this its resident memory grew to 10 GiB by
    the end of the run (two workers on a 24 GiB machine), and a Flax train-step compile then aborted
    (CI, 2026-11-26)."""
    if nextitem is not None and _model_of(nextitem) == _model_of(item):
        return
    import psutil
    if psutil.Process().memory_info().rss > CACHE_LIMIT_BYTES:
        _free_framework_caches()
