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


#: Whole-network pairs re-run on the JAX and torch Keras backends: one model per family and size class.
#: (All 27 run on TensorFlow in every CI run; all 27 were measured on every Keras backend — README.)
KERAS_BACKEND_MODELS = {"shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x1_0", "resnext50_32x4d"}


def pytest_collection_modifyitems(config, items):
    """Anything parametrised with a Keras framework is marked ``keras`` (re-run on every Keras backend),
    except whole-network pairs outside :data:`KERAS_BACKEND_MODELS`, which run on TensorFlow only."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        if not any(v == "keras" or (isinstance(v, tuple) and "keras" in v) for v in params.values()):
            continue
        if item.module.__name__.endswith("test_networks") and params.get("model") not in KERAS_BACKEND_MODELS \
                and "model" in params:
            continue
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

    import harness
    harness.network_outputs.cache_clear()
    harness.train_outputs.cache_clear()
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
