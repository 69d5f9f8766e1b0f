"""Whole networks: every model, every pair of parties (torch, Keras on each backend, Flax and the NumPy
oracle), float32 and float64, eval mode, weights moved through the porting table; every stage output
compared, so a failure names the first stage that diverges.

Each party's outputs are computed once per run (``harness.network_outputs``, shared through the test
store), so a pair test is a comparison. The pairs of one pytest run are ``harness.run_pairs()``: the main
run checks torch, keras[tensorflow], flax and the oracle against each other, each Keras re-run its own
backend against all of those and the Keras backends before it — every pair of the six parties, once."""

from __future__ import annotations

import numpy as np
import pytest

from common import count_parameters, get_spec, list_models
from common.check.compare import BOUNDS, compare
from conftest import import_backend
from harness import (FULL, MEGVII_MODELS, MEGVII_SIZE, TRAINABLE, network_batch, network_outputs, network_size,
                     pair_major, run_pairs)

DTYPES = ("float32", "float64")
#: One size for every model, chosen to prove at once what a square even size and an odd size proved
#: separately: H = 64 halves evenly (32, 16, 8, 4, 2), so every stride-2 conv and pool sees an even input
#: there — where TF-style "same" padding differs from PyTorch's by O(1); W = 49 stays odd (25, 13, 7)
#: down to the last stage, so every stride-2 layer's floor rounding is exercised; and H != W catches a
#: swapped H/W. The last stage is 2 x 2, as at 64 x 64.
SMALL = (64, 49)
#: ``bash .ci/test --full`` (the exhaustive tier): every model also at an odd size in both axes and at
#: 224 x 224. The fast tier runs 224 x 224 for one model per family.
ODD_SIZE = (97, 61)
SIZES = (SMALL, ODD_SIZE) if FULL else (SMALL,)
#: Megvii's released configurations run at 224 x 224 on a converted Megvii checkpoint instead of SMALL
#: (harness.MEGVII_MODELS; test_megvii compares them with Megvii's own model); --full adds SMALL and ODD_SIZE.
#: That covers both ShuffleNet families at 224 x 224; the fast tier adds ResNeXt-50 for the ResNets.
FULL_SIZE_MODELS = tuple(list_models()) if FULL else ("resnext50_32x4d",)
SMALL_SIZE_MODELS = tuple(m for m in list_models() if FULL or m not in MEGVII_MODELS)


def _cases(models, size, batch=None):
    return [pytest.param(m, d, a, b, size, batch or network_batch(m), id=f"{m}-{d}-{a}-{b}-{size[0]}x{size[1]}")
            for (a, b), (m, d) in pair_major(run_pairs(), [(m, d) for m in models for d in DTYPES])]


def _taps(outputs: dict) -> dict:
    return {k: v for k, v in outputs.items() if k != TRAINABLE}


def _check_pair(model, dtype, a, b, size, batch):
    out_a = _taps(network_outputs(a, model, dtype, size, batch=batch))
    out_b = _taps(network_outputs(b, model, dtype, size, batch=batch))
    assert list(out_a) == list(get_spec(model).stage_names) == list(out_b)
    worst = []
    for tap in out_a:
        max_abs, max_rel = compare(out_a[tap], out_b[tap])
        worst.append((tap, max_rel))
        assert max_rel <= BOUNDS[dtype], (
            f"{model} {dtype} {a} vs {b}: first divergence at {tap!r}: max rel {max_rel:.3e} "
            f"> {BOUNDS[dtype]:.0e} (max |Δ| {max_abs:.3e}); per tap so far: {worst}")


@pytest.mark.parametrize("model,dtype,a,b,size,batch",
                         [case for size in SIZES for case in _cases(SMALL_SIZE_MODELS, size, 2)]
                         + _cases(list(MEGVII_MODELS), MEGVII_SIZE))
def test_network_pair(model, dtype, a, b, size, batch):
    _check_pair(model, dtype, a, b, size, batch)


@pytest.mark.slow
@pytest.mark.parametrize("model,dtype,a,b,size,batch", _cases(FULL_SIZE_MODELS, (224, 224), 2))
def test_network_pair_full_size(model, dtype, a, b, size, batch):
    _check_pair(model, dtype, a, b, size, batch)


@pytest.mark.parametrize("model", list_models())
def test_parameter_count_matches_spec(framework, model):
    """What each framework itself reports as trainable, counted on the model the network test built."""
    counted = network_outputs(framework, model, "float32", network_size(model), batch=network_batch(model))[TRAINABLE]
    assert int(counted) == count_parameters(get_spec(model))


@pytest.mark.parametrize("num_classes", [1, 10])
def test_any_num_classes(framework, num_classes):
    out = network_outputs(framework, "shufflenet_v2_x0_5", "float32", (32, 48), num_classes, batch=3)
    assert out["logits"].shape == (3, num_classes) and np.isfinite(out["logits"]).all()


def test_output_shapes_follow_the_spec(framework):
    out = network_outputs(framework, "resnext50_32x4d", "float32", SMALL)
    assert out["stem"].shape == (2, 64, 16, 13) and out["layer4"].shape == (2, 2048, 2, 2)
    assert out["pre_logits"].shape == (2, 2048) and out["logits"].shape == (2, 1000)


def test_float64_models_compute_in_float64(framework):
    """A float64 result must carry float64 precision, not float32 hiding behind a float64 dtype (read from
    the whole-network entries, so it costs no second compile)."""
    model = "shufflenet_v2_x0_5"
    size, batch = network_size(model), network_batch(model)
    f64 = network_outputs(framework, model, "float64", size, batch=batch)["logits"]
    oracle = network_outputs("numpy", model, "float64", size, batch=batch)["logits"]
    assert f64.dtype == np.float64 and compare(f64, oracle)[1] <= 1e-12


def test_unknown_model_is_a_clear_error(framework):
    backend = import_backend(framework)
    with pytest.raises(ValueError, match="did you mean"):
        backend.create_model("resnext50_32x8d")
