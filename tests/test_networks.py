"""Whole networks: every model, every framework pair (and the NumPy oracle), float32 and float64,
eval mode, weights moved through the porting table; every stage output compared, so a failure names
the first stage that diverges."""

from __future__ import annotations

import numpy as np
import pytest

from common import count_parameters, get_spec, list_models
from common.verify import BOUNDS, compare
from conftest import FRAMEWORKS, import_backend
from harness import PAIRS, network_outputs, trainable_parameter_count

DTYPES = ("float32", "float64")
SMALL = (64, 64)
ODD_SIZE_MODELS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
                   "shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x0_5", "shufflenet_v1_g1_x2_0", "resnext50_32x4d")
FULL_SIZE_MODELS = ("shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "resnext50_32x4d")


def _cases(models, size):
    return [pytest.param(m, d, a, b, size, id=f"{m}-{d}-{a}-{b}-{size[0]}x{size[1]}",
                         marks=pytest.mark.xdist_group(m))
            for m in models for d in DTYPES for a, b in PAIRS]


def _check_pair(model, dtype, a, b, size):
    out_a, out_b = network_outputs(a, model, dtype, size), network_outputs(b, model, dtype, size)
    assert list(out_a) == list(get_spec(model).stage_names) == list(out_b)
    worst = []
    for tap in out_a:
        max_abs, max_rel = compare(out_a[tap], out_b[tap])
        worst.append((tap, max_rel))
        assert max_rel <= BOUNDS[dtype], (
            f"{model} {dtype} {a} vs {b}: first divergence at {tap!r}: max rel {max_rel:.3e} "
            f"> {BOUNDS[dtype]:.0e} (max |Δ| {max_abs:.3e}); per tap so far: {worst}")


@pytest.mark.parametrize("model,dtype,a,b,size", _cases(list_models(), SMALL))
def test_network_pair(model, dtype, a, b, size):
    _check_pair(model, dtype, a, b, size)


@pytest.mark.parametrize("model,dtype,a,b,size", _cases(ODD_SIZE_MODELS, (97, 61)))
def test_network_pair_odd_size(model, dtype, a, b, size):
    _check_pair(model, dtype, a, b, size)


@pytest.mark.slow
@pytest.mark.parametrize("model,dtype,a,b,size", _cases(FULL_SIZE_MODELS, (224, 224)))
def test_network_pair_full_size(model, dtype, a, b, size):
    _check_pair(model, dtype, a, b, size)


@pytest.mark.parametrize("model", list_models())
def test_parameter_count_matches_spec(framework, model):
    backend = import_backend(framework)
    net = backend.create_model(model)
    assert trainable_parameter_count(framework, net) == count_parameters(get_spec(model))


@pytest.mark.parametrize("num_classes", [1, 10])
def test_any_num_classes(framework, num_classes):
    out = network_outputs(framework, "shufflenet_v2_x0_5", "float32", (32, 48), num_classes, batch=3)
    assert out["logits"].shape == (3, num_classes) and np.isfinite(out["logits"]).all()


def test_output_shapes_follow_the_spec(framework):
    out = network_outputs(framework, "resnext50_32x4d", "float32", SMALL)
    assert out["stem"].shape == (2, 64, 16, 16) and out["layer4"].shape == (2, 2048, 2, 2)
    assert out["pre_logits"].shape == (2, 2048) and out["logits"].shape == (2, 1000)


def test_float64_models_compute_in_float64(framework):
    """A float64 result must carry float64 precision, not float32 hiding behind a float64 dtype."""
    f64 = network_outputs(framework, "shufflenet_v2_x0_5", "float64", (32, 32))["logits"]
    oracle = network_outputs("numpy", "shufflenet_v2_x0_5", "float64", (32, 32))["logits"]
    assert compare(f64, oracle)[1] <= 1e-12


def test_unknown_model_is_a_clear_error(framework):
    backend = import_backend(framework)
    with pytest.raises(ValueError, match="did you mean"):
        backend.create_model("resnext50_32x8d")
