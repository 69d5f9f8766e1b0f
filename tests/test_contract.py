"""The backend contract as written in docs/backend-contract.md is what the three packages export: every
documented name in each ``__all__``, each documented function with the documented parameters, in the
documented order, with the documented defaults (a backend may add parameters only after them, with
defaults). The drift it guards against: ``create_model``'s ``num_classes`` defaulted to ``None`` in torch
and to 1000 in Keras and Flax, so a custom 10-class spec was re-headed to 1000 classes there."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from common import (GroupnetsError, UnknownModelError, WeightsMismatchError, get_spec, random_input,
                    random_weights)
from conftest import FRAMEWORKS, import_backend

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "backend-contract.md"


def _documented() -> dict[str, list[tuple[str, object, object]] | None]:
    """name -> [(parameter, kind, default or inspect.Parameter.empty)] (``None`` for a constant), from the
    first column of the "Public names" table."""
    section = CONTRACT.read_text().split("## Public names", 1)[1].split("\n## ", 1)[0]
    names: dict = {}
    for cell in re.findall(r"^\| `([^`]+)` \|", section, re.M):
        match = re.fullmatch(r"(\w+)(?:\((.*?)\))?(?: -> .*)?", cell)
        assert match, f"unreadable contract entry {cell!r}"
        name, params = match.groups()
        if params is None:
            names[name] = None
            continue
        parsed, kind = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
        for part in (p.strip() for p in params.split(",")):
            if part == "*":
                kind = inspect.Parameter.KEYWORD_ONLY
                continue
            pname, _, default = part.partition("=")
            parsed.append((pname, kind, ast.literal_eval(default) if default else inspect.Parameter.empty))
        names[name] = parsed
    return names


DOCUMENTED = _documented()


def test_the_contract_table_was_read():
    assert {"DATA_FORMAT", "create_model", "build", "load_weights", "forward_numpy"} <= DOCUMENTED.keys()


@pytest.mark.backend_neutral  # signatures are Python, the same on every Keras backend
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_backend_exports_the_documented_signature(framework, name):
    backend = import_backend(framework)
    assert name in backend.__all__, f"{framework}_impl does not export {name}"
    documented = DOCUMENTED[name]
    if documented is None:
        return
    actual = list(inspect.signature(getattr(backend, name)).parameters.values())
    positional = [p for p in actual if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    wanted_positional = [d for d in documented if d[1] is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [(p.name, p.kind, p.default) for p in positional[:len(wanted_positional)]] == wanted_positional, (
        f"{framework}_impl.{name}{inspect.signature(getattr(backend, name))} does not start like the contract's")
    by_name = {p.name: p for p in actual}
    for pname, kind, default in documented:
        assert pname in by_name and by_name[pname].kind is kind and by_name[pname].default == default, (
            f"{framework}_impl.{name}: parameter {pname!r} differs from the contract")
    extra = [p for p in actual if p.name not in {d[0] for d in documented}]
    assert all(p.default is not inspect.Parameter.empty for p in extra), f"{framework}_impl.{name}: {extra}"


@pytest.mark.backend_neutral
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_custom_spec_keeps_its_classes(framework):
    backend = import_backend(framework)
    spec = get_spec("shufflenet_v2_x0_5", 10)
    assert backend.create_model(spec).spec.num_classes == 10
    assert backend.create_model("shufflenet_v2_x0_5").spec.num_classes == 1000


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bad_input_raises_the_same_error_type_everywhere(framework):
    """The same mistakes raise the same ``common.errors`` types in every backend (they drifted: a weight
    mismatch was WeightsMismatchError in torch, ValueError in Keras, RuntimeError in Flax)."""
    backend = import_backend(framework)
    spec = get_spec("shufflenet_v2_x0_5", 10)
    with pytest.raises(UnknownModelError):
        backend.create_model("shufflenet_v9")
    with pytest.raises(GroupnetsError, match="dtype must be one of"):
        backend.build(spec, "int8")
    weights = random_weights(spec, 0, "float32", calibrate=False)
    missing = {k: v for k, v in weights.items() if k != "fc.bias"}
    with pytest.raises(WeightsMismatchError, match="fc.bias"):
        backend.build(spec, "float32", weights=missing)
    reshaped = {**weights, "conv1.0.weight": weights["conv1.0.weight"][:, :2]}
    with pytest.raises(WeightsMismatchError, match="conv1.0.weight"):
        backend.build(spec, "float32", weights=reshaped)
    model = backend.build(spec, "float32", weights=weights)
    nchw = random_input((2, 3, 16, 16))
    wrong = nchw.transpose(0, 2, 3, 1) if backend.DATA_FORMAT == "channels_first" else nchw
    for call in (lambda: backend.forward_numpy(model, wrong),
                 lambda: backend.train_step_numpy(model, wrong, [0, 1])):
        with pytest.raises(GroupnetsError, match="looks like"):
            call()
    right = nchw if backend.DATA_FORMAT == "channels_first" else nchw.transpose(0, 2, 3, 1)
    with pytest.raises(GroupnetsError, match="labels"):
        backend.train_step_numpy(model, right, [0, 10])
    for settings, message in (({"lr": -0.1}, "lr must be >= 0"), ({"lr": 0.1, "steps": 0}, "steps must be"),
                              ({"lr": 0.1, "steps": 1.5}, "steps must be"), ({"steps": 2}, "needs lr > 0")):
        with pytest.raises(GroupnetsError, match=message):
            backend.train_step_numpy(model, right, [0, 1], **settings)
