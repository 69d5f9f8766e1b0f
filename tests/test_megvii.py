"""Megvii's official ShuffleNet V1 / V2 checkpoints: the twelve released configurations load exactly, in every
framework, through key renames and channel permutations derived from the specs — and back.

The checkpoints are made here (tests/fixtures/megvii_shufflenet.py: Megvii's module structure written from
their published description, random weights, calibrated BatchNorm). Every pair of parties already runs each
target model on the converted checkpoint at 224 x 224 (test_networks, harness.MEGVII_MODELS); this file
compares those outputs with Megvii's own model, and checks the mapping's claims, its sensitivity and the
files."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common import WeightsFileError, WeightsMismatchError, count_parameters, get_spec, list_models, random_weights
from common.check.compare import BOUNDS, compare
from common.check.oracle import forward
from common.files.convert import convert, read_weights, read_weights_file, write_weights
from common.files.inspect import inspect_file
from common.spec import ir, megvii
from common.spec.correspondence import Correspondence, correspondence, map_weights
from common.weights.megvii import from_megvii, to_megvii
from fixtures.megvii_shufflenet import RELEASED, MegviiShuffleNet, save_megvii_checkpoint
from harness import (MEGVII_BATCH, MEGVII_MODELS, MEGVII_SIZE, local_parties, megvii_checkpoint, megvii_reference,
                     network_outputs)

GROUPNETS = str(Path(sys.executable).with_name("groupnets"))
#: Megvii's parameter counts (no classifier bias), as published with the checkpoints.
PUBLISHED_PARAMETERS = {
    "shufflenet_v1_g3_x0_5": 717_324, "shufflenet_v1_g3_x1_0": 1_864_728, "shufflenet_v1_g3_x1_5": 3_441_168,
    "shufflenet_v1_g3_x2_0": 5_449_776, "shufflenet_v1_g8_x0_5": 1_010_448, "shufflenet_v1_g8_x1_0": 2_433_768,
    "shufflenet_v1_g8_x1_5": 4_268_952, "shufflenet_v1_g8_x2_0": 6_521_232, "shufflenet_v2_x0_5": 1_365_792,
    "shufflenet_v2_x1_0": 2_278_760, "shufflenet_v2_x1_5": 3_506_720, "shufflenet_v2_x2_0": 7_402_600,
}
DTYPES = ("float32", "float64")


def test_released_configurations_and_their_models():
    assert set(RELEASED) == set(megvii.RELEASED) == set(PUBLISHED_PARAMETERS)
    assert sorted(MEGVII_MODELS.values()) == sorted(RELEASED)
    assert sorted(m for m in list_models() if m.endswith("_megvii")) == sorted(megvii.DIFFERENCES)
    for name in RELEASED:
        target = megvii.target_model(name)
        counted = count_parameters(get_spec(target)) - 1000  # canonical weights carry fc.bias (zero)
        assert counted == PUBLISHED_PARAMETERS[name] == sum(p.numel() for p in MegviiShuffleNet(name).parameters())


@pytest.mark.parametrize("name", RELEASED)
def test_own_model_exactly_where_no_channel_correspondence_exists(name):
    """The ``_megvii`` models are registered where (and only where) the correspondence derived from the
    specs finds no permutation: V1 g8 at 0.5x / 1.0x / 1.5x (per-group channel counts differ) and V2 from
    1.0x (stage 2's unequal split). Where one exists it is not the identity."""
    corr = megvii.to_standard(name)
    assert (corr is None) == (name + megvii.SUFFIX in megvii.DIFFERENCES)
    assert corr is None or not corr.is_identity


def test_v2_needs_megvii_routing_not_only_its_widths():
    """Megvii's V2 x1.0 widths with torchvision's chunk + shuffle routing still cannot hold Megvii's network:
    the routing is part of the architecture (and at x0.5, where the widths agree, it maps)."""
    for name in ("shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"):
        theirs = megvii.megvii_architecture(name)
        chunked = replace(theirs, stages=tuple(replace(s, blocks=tuple(replace(b, routing="chunk") for b in s.blocks))
                                               for s in theirs.stages))
        assert correspondence(theirs, chunked) is None
    assert correspondence(megvii.megvii_architecture("shufflenet_v2_x0_5"), get_spec("shufflenet_v2_x0_5")) is not None


def _reproduced_cases():
    return [pytest.param(party, model, dtype, id=f"{party}-{model}-{dtype}")
            for model in MEGVII_MODELS for party in local_parties() for dtype in DTYPES]


@pytest.mark.parametrize("framework,model,dtype", _reproduced_cases())
def test_reproduces_megvii_at_224(framework, model, dtype):
    """Each party's logits on the converted checkpoint (the network tests' entries) against Megvii's own
    module run in the same dtype, at 224 x 224."""
    ours = network_outputs(framework, model, dtype, MEGVII_SIZE, batch=MEGVII_BATCH)["logits"]
    theirs = megvii_reference(MEGVII_MODELS[model], dtype)
    max_abs, max_rel = compare(ours, theirs)
    assert max_rel <= BOUNDS[dtype], f"{framework} {model} {dtype}: max rel {max_rel:.3e} (|Δ| {max_abs:.3e})"


def _swapped(corr: Correspondence, index: int, which: str) -> Correspondence:
    """``corr`` with two channels of one leaf's permutation exchanged (within one conv group)."""
    leaf = corr.leaves[index]
    perm = getattr(leaf, which).copy()
    perm[[0, 1]] = perm[[1, 0]]
    leaves = list(corr.leaves)
    leaves[index] = replace(leaf, **{which: perm})
    return replace(corr, leaves=tuple(leaves))


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5"])
def test_one_swapped_channel_is_caught(name):
    """A permutation that is right everywhere but in one channel of one tensor must not reproduce Megvii:
    for a conv's outputs, a BatchNorm's channels, and a conv's inputs, first / middle / last of the network."""
    corr = megvii.to_standard(name)
    spec = get_spec(name)
    theirs = megvii.megvii_architecture(name)
    source = map_weights(corr, from_megvii(megvii_checkpoint(name), name)[1], inverse=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96))  # any size: this is groupnets' spec of theirs
    reference = forward(theirs, source, x)["logits"]
    assert compare(forward(spec, map_weights(corr, source), x)["logits"], reference)[1] <= BOUNDS["float64"]
    leaves = list(enumerate(corr.leaves))
    convs = [(i, m) for i, m in leaves if isinstance(m.node, ir.Conv2d) and not m.node.is_depthwise]
    conv_out = [i for i, m in convs if m.out_perm is not None]
    norms = [i for i, m in leaves if isinstance(m.node, ir.BatchNorm2d) and m.out_perm is not None]
    conv_in = [i for i, m in convs if m.in_perm is not None]
    picks = [(conv_out[0], "out_perm"), (norms[len(norms) // 2], "out_perm"), (conv_in[-1], "in_perm")]
    for index, which in picks:
        wrong = map_weights(_swapped(corr, index, which), source)
        max_rel = compare(forward(spec, wrong, x)["logits"], reference)[1]
        assert max_rel > BOUNDS["float32"], f"swapping two channels of {corr.leaves[index].target} {which} went unnoticed"


def _checkpoint(path: Path, name: str, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Megvii's released file for ``name`` (their float32 weights), written as their script saves it."""
    import torch
    model = MegviiShuffleNet(name)
    state = {k: torch.from_numpy(v) for k, v in megvii_checkpoint(name).items()}
    model.load_state_dict(state)
    model.to(getattr(torch, dtype))
    save_megvii_checkpoint(model, path)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _torch_contents(path: Path) -> tuple[list[str], dict]:
    import torch
    loaded = torch.load(path, weights_only=True)
    return list(loaded), loaded["state_dict"]


@pytest.mark.parametrize("name", RELEASED)
def test_file_converts_and_exports_back_to_the_same_contents(tmp_path, name):
    """``convert`` without a model name recognises Megvii's keys, writes the model that holds Megvii's
    network (its name in the metadata), and ``--to megvii`` gives back the same file contents: the
    ``{'state_dict'}`` wrapper, ``module.`` keys in Megvii's order, the same tensors bit for bit."""
    source = tmp_path / f"{name}.pth.tar"
    _checkpoint(source, name)
    result = convert(None, source, tmp_path / "w.safetensors")
    assert result.model == megvii.target_model(name)
    weights, recorded = read_weights(tmp_path / "w.safetensors")
    assert recorded == result.model and not weights["fc.bias"].any()
    convert(result.model, tmp_path / "w.safetensors", tmp_path / "back.pth.tar", destination_format="megvii")
    (top_a, a), (top_b, b) = _torch_contents(source), _torch_contents(tmp_path / "back.pth.tar")
    assert top_a == top_b == ["state_dict"] and list(a) == list(b)
    assert all(a[k].dtype == b[k].dtype and bool((a[k] == b[k]).all()) for k in a)


def test_every_format_and_the_command_line(tmp_path):
    """The standard name of a configuration whose Megvii network is its own model converts into that model
    (said on stdout, named in the metadata); a mapped one into the standard model, in every format;
    ``inspect`` recognises the file."""
    source = tmp_path / "shufflenetv2_x1.0.pth.tar"
    _checkpoint(source, "shufflenet_v2_x1_0")
    cli = subprocess.run([GROUPNETS, "convert", "shufflenet_v2_x1_0", str(source), str(tmp_path / "out.keras")],
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    assert "shufflenet_v2_x1_0_megvii" in cli.stdout and "Megvii" in cli.stdout
    assert read_weights(tmp_path / "out.keras")[1] == "shufflenet_v2_x1_0_megvii"
    report = subprocess.run([GROUPNETS, "inspect", str(source)], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    assert "Megvii ShuffleNet-Series" in report.stdout and "shufflenet_v2_x1_0_megvii" in report.stdout

    mapped = tmp_path / "shufflenetv1_g3_0.5x.pth.tar"
    _checkpoint(mapped, "shufflenet_v1_g3_x0_5")
    expected = from_megvii({k.removeprefix("module."): v.numpy() for k, v in _torch_contents(mapped)[1].items()},
                           "shufflenet_v1_g3_x0_5")[1]
    for ext in (".safetensors", ".pth", ".weights.h5", ".keras", ".msgpack"):
        out = tmp_path / f"g3{ext}"
        assert convert("shufflenet_v1_g3_x0_5", mapped, out).model == "shufflenet_v1_g3_x0_5"
        got = read_weights(out, model="shufflenet_v1_g3_x0_5")[0]
        assert list(got) == list(expected) and all(np.array_equal(got[k], expected[k]) for k in got), ext
    assert "Megvii" in inspect_file(mapped).format_text()


def test_bad_megvii_files_are_refused_by_name(tmp_path):
    source = tmp_path / "g8.pth.tar"
    weights = _checkpoint(source, "shufflenet_v1_g8_x0_5")
    for other in ("shufflenet_v1_g4_x1_0", "shufflenet_v1_g8_x1_0", "resnext50_32x4d"):  # not released / another
        with pytest.raises(WeightsFileError, match="holds Megvii's shufflenet_v1_g8_x0_5 weights"):
            convert(other, source, tmp_path / "a.safetensors")
    missing = dict(weights)
    missing.pop("features.3.branch_main_2.1.running_var")
    with pytest.raises(WeightsMismatchError, match="running_var"):
        from_megvii(missing, "shufflenet_v1_g8_x0_5")
    with pytest.raises(WeightsMismatchError, match="no place"):
        from_megvii({**weights, "features.3.branch_extra.0.weight": weights["classifier.0.weight"]},
                    "shufflenet_v1_g8_x0_5")
    with pytest.raises(WeightsMismatchError, match="no bias"):
        from_megvii({**weights, "classifier.0.bias": np.zeros(1000, np.float32)}, "shufflenet_v1_g8_x0_5")
    assert not list(tmp_path.glob("a.*"))
    # what cannot be written in Megvii's layout: a classifier bias, torchvision's V2 x1.0 architecture
    target, canonical = from_megvii(weights)
    canonical["fc.bias"] = canonical["fc.bias"] + 1
    with pytest.raises(WeightsMismatchError, match="no bias"):
        to_megvii(canonical, target)
    torchvision_v2 = random_weights(get_spec("shufflenet_v2_x1_0"), 0, calibrate=False)
    torchvision_v2["fc.bias"][:] = 0
    with pytest.raises(WeightsMismatchError, match="shufflenet_v2_x1_0_megvii"):
        to_megvii(torchvision_v2, "shufflenet_v2_x1_0")
    plain = tmp_path / "plain.pth"
    write_weights(plain, random_weights(get_spec("shufflenet_v2_x0_5"), 0, calibrate=False),
                  get_spec("shufflenet_v2_x0_5"))
    with pytest.raises(WeightsFileError, match="does not have Megvii"):
        read_weights_file(plain, "megvii")
