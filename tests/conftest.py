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


def pytest_collection_modifyitems(config, items):
    """Anything parametrised with a Keras framework is marked ``keras`` (re-run on every backend)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        values = callspec.params.values() if callspec else ()
        if any(v == "keras" or (isinstance(v, tuple) and "keras" in v) for v in values):
            item.add_marker(pytest.mark.keras)
