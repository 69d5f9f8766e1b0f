"""Canonical weights: torchvision key compatibility, bit-exact round trips between frameworks, strict
loading that lists every problem at once and loads nothing, and the safetensors file format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from common import (WeightsFileError, WeightsMismatchError, canonical_params, get_spec, load_weights,
                    random_weights, save_weights)
from common.check.compare import compare
from common.check.verify import run_framework
from conftest import FRAMEWORKS, import_backend

FIXTURES = Path(__file__).parent / "fixtures"
TORCHVISION = json.loads((FIXTURES / "torchvision_state_dicts.json").read_text())
SAMPLE_MODELS = ("shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x0_5")


@pytest.mark.parametrize("model", sorted(TORCHVISION["models"]))
def test_canonical_keys_are_torchvision_keys(model):
    recorded = [(k, tuple(shape)) for k, shape, _ in TORCHVISION["models"][model]]
    ours = [(k, p.shape) for k, p in canonical_params(get_spec(model)).items()]
    assert ours == recorded  # same keys, same shapes, same order


@pytest.mark.parametrize("model", sorted(TORCHVISION["models"]))
def test_torch_state_dict_is_torchvision_state_dict(model):
    torch_impl = import_backend("torch")
    state = torch_impl.create_model(model).state_dict()
    recorded = TORCHVISION["models"][model]
    assert [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()] == \
        [(k, shape, dtype) for k, shape, dtype in recorded]


def test_torchvision_checkpoint_loads_strictly_and_reproduces_torchvision(framework):
    """A real torchvision .pth (recorded with torchvision 0.29.1) → every framework → torchvision's logits."""
    import torch  # the canonical source format here is a torch checkpoint

    state = torch.load(FIXTURES / "torchvision_shufflenet_v2_x0_5_c10.pth", weights_only=True)
    reference = np.load(FIXTURES / "torchvision_shufflenet_v2_x0_5_c10_io.npz")
    weights = {k: v.numpy() for k, v in state.items()}
    spec = get_spec("shufflenet_v2_x0_5", 10)
    if framework == "torch":
        model = import_backend("torch").create_model(spec, dtype="float64")
        model.load_state_dict(state, strict=True)  # torchvision's own file, unchanged, strict
    logits = run_framework(framework, spec, weights, reference["x"], "float64")["logits"]
    assert compare(logits, reference["logits"])[1] <= 1e-12


@pytest.mark.parametrize("model", SAMPLE_MODELS)
def test_export_load_round_trip_is_bit_exact(framework, model):
    backend = import_backend(framework)
    weights = random_weights(get_spec(model), 3, "float32")
    net = backend.create_model(model)
    report = backend.load_weights(net, weights)
    assert not report.missing_keys and not report.unexpected_keys
    exported = backend.export_weights(net)
    assert list(exported) == list(weights)
    for key, value in weights.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key


def test_build_with_weights_loads_them_strictly(framework):
    """``build(node, dtype, weights=...)`` holds exactly those weights, refuses a mismatched set (nothing
    returned), and the initial values it skips drawing (Keras) are still drawn by a plain build."""
    backend = import_backend(framework)
    spec = get_spec("shufflenet_v1_g3_x0_5")
    weights = random_weights(spec, 3, "float32")
    exported = backend.export_weights(backend.build(spec, dtype="float32", weights=weights))
    assert list(exported) == list(weights) and all(np.array_equal(exported[k], weights[k]) for k in weights)
    first = next(iter(weights))
    with pytest.raises(WeightsMismatchError, match=first):
        backend.build(spec, dtype="float32", weights={k: v for k, v in weights.items() if k != first})
    drawn = backend.export_weights(backend.build(spec, dtype="float32"))
    assert all(np.std(drawn[k]) > 0 for k in weights if k.endswith("weight") and weights[k].ndim == 4)


@pytest.mark.parametrize("model", ("shufflenet_v2_x0_5", "shufflenet_v1_g2_x0_5", "resnext50_32x4d"))
def test_round_trip_through_every_framework_is_bit_exact(model):
    weights = random_weights(get_spec(model), 4, "float32")
    current = weights
    for framework in ("torch", "keras", "flax", "torch"):
        backend = import_backend(framework)
        net = backend.create_model(model)
        backend.load_weights(net, current)
        current = backend.export_weights(net)
    assert all(np.array_equal(current[k], weights[k]) and current[k].dtype == weights[k].dtype for k in weights)


def _broken(weights: dict) -> dict:
    bad = dict(weights)
    del bad["conv1.0.weight"], bad["stage2.0.branch1.1.running_var"]
    bad["extra.weight"] = np.zeros(3, np.float32)
    bad["fc.bias"] = np.zeros(7, np.float32)
    bad["fc.weight"] = bad["fc.weight"].astype(np.int32)
    return bad


def test_strict_load_lists_every_problem_and_loads_nothing(framework):
    backend = import_backend(framework)
    net = backend.create_model("shufflenet_v2_x0_5")
    before = backend.export_weights(net)
    with pytest.raises(WeightsMismatchError) as info:
        backend.load_weights(net, _broken(random_weights(get_spec("shufflenet_v2_x0_5"), 5)))
    error = info.value
    assert error.missing == ["conv1.0.weight", "stage2.0.branch1.1.running_var"]
    assert error.unexpected == ["extra.weight"]
    assert [k for k, *_ in error.wrong_shape] == ["fc.bias"] and [k for k, *_ in error.wrong_dtype] == ["fc.weight"]
    for text in ("conv1.0.weight", "extra.weight", "fc.bias", "expected (1000,), got (7,)", "nothing was loaded"):
        assert text in str(error)
    after = backend.export_weights(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # untouched


def test_non_strict_load_skips_and_reports_keys(framework):
    """Transfer learning: a 1000-class checkpoint into a 10-class model, head skipped and reported."""
    backend = import_backend(framework)
    source = random_weights(get_spec("shufflenet_v2_x0_5"), 6)
    backbone = {k: v for k, v in source.items() if not k.startswith("fc.")}
    net = backend.create_model("shufflenet_v2_x0_5", num_classes=10)
    fc_before = backend.export_weights(net)["fc.weight"]
    report = backend.load_weights(net, {**backbone, "head.weight": np.zeros(2, np.float32)}, strict=False)
    assert report.missing_keys == ("fc.weight", "fc.bias") and report.unexpected_keys == ("head.weight",)
    after = backend.export_weights(net)
    assert np.array_equal(after["conv1.0.weight"], source["conv1.0.weight"])
    assert np.array_equal(after["fc.weight"], fc_before)
    with pytest.raises(WeightsMismatchError, match="fc.weight"):  # shapes are never skipped silently
        backend.load_weights(net, source, strict=False)


def test_float64_weights_load_into_float32_models_and_back(framework):
    backend = import_backend(framework)
    weights64 = random_weights(get_spec("shufflenet_v1_g3_x0_5"), 7, "float64")
    net = backend.create_model("shufflenet_v1_g3_x0_5", dtype="float32")
    backend.load_weights(net, weights64)
    exported = backend.export_weights(net)
    assert exported["conv1.0.weight"].dtype == np.float32
    assert np.array_equal(exported["conv1.0.weight"], weights64["conv1.0.weight"].astype(np.float32))
    assert exported["conv1.1.num_batches_tracked"] == weights64["conv1.1.num_batches_tracked"]


# -------------------------------------------------------------------------------------------- files
def test_safetensors_round_trip_with_metadata(tmp_path):
    weights = random_weights(get_spec("shufflenet_v2_x0_5"), 8)
    path = save_weights(tmp_path / "w.safetensors", weights, {"model": "shufflenet_v2_x0_5", "num_classes": 1000})
    loaded, meta = load_weights(path)
    assert meta["model"] == "shufflenet_v2_x0_5" and meta["num_classes"] == "1000"
    assert meta["format"].startswith("groupnets-canonical/")
    assert set(loaded) == set(weights) and all(np.array_equal(loaded[k], weights[k]) for k in weights)  # file order is sorted
    assert loaded["conv1.1.num_batches_tracked"].dtype == np.int64 and loaded["conv1.1.num_batches_tracked"].shape == ()
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]  # no temp files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the mode a plain open() would give


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": np.ones(3, np.float32)})
    original = path.read_bytes()

    class Boom(dict):
        def items(self):
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        save_weights(path, Boom(a=1))
    assert path.read_bytes() == original and sorted(os.listdir(tmp_path)) == ["w.safetensors"]
    with pytest.raises(WeightsFileError, match="refusing to overwrite"):
        save_weights(path, {"a": np.ones(3, np.float32)}, overwrite=False)


@pytest.mark.parametrize("case", ["missing", "empty", "directory", "truncated", "garbage", "no_parent"])
def test_bad_weight_files_are_clear_errors(tmp_path, case):
    path = tmp_path / "w.safetensors"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "truncated":
        save_weights(path, random_weights(get_spec("shufflenet_v2_x0_5"), 9))
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "garbage":
        path.write_bytes(b"\x80\x04\x95 this is a pickle, not a safetensors file" * 10)
    elif case == "no_parent":
        with pytest.raises(WeightsFileError, match="does not exist"):
            save_weights(tmp_path / "nope" / "w.safetensors", {"a": np.ones(1, np.float32)})
        return
    with pytest.raises(WeightsFileError, match=str(path.name)):
        load_weights(path)


def test_torch_compiled_model_ports_like_its_module(tmp_path):
    """``torch.compile`` wraps the module as ``_orig_mod`` (a private attribute, docs/private-hooks.md):
    export / load see through the wrapper, and its ``_orig_mod.``-prefixed checkpoint reads as canonical.
    Nothing here compiles (the wrapper compiles on its first call)."""
    import torch
    import torch_impl
    from common.files.convert import read_weights

    spec = get_spec("shufflenet_v2_x0_5", 10)
    weights = random_weights(spec, 0, "float32", calibrate=False)
    compiled = torch.compile(torch_impl.build(spec))
    torch_impl.load_weights(compiled, weights)
    exported = torch_impl.export_weights(compiled)
    assert list(exported) == list(weights)
    assert all(np.array_equal(exported[k], v) for k, v in weights.items())
    torch.save(compiled.state_dict(), tmp_path / "compiled.pth")
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    read, _ = read_weights(tmp_path / "compiled.pth")
    assert all(np.array_equal(read[k], v) for k, v in weights.items()) and read.keys() == weights.keys()
