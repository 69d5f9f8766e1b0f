"""Training mode: train-mode forward, BatchNorm statistics (PyTorch's unbiased update, momentum 0.1),
loss, gradients of every parameter and of the input, one SGD step with momentum and coupled weight decay
— every framework pair, both dtypes, every model family; and the frozen-backbone contract.

Float64 checks every quantity at 1e-12. Float32 checks the quantities that are continuous functions of
the data (train-mode logits, loss, BN running statistics and counters) at 1e-5: gradients of a ReLU /
max-pool network are discontinuous at the kinks, and where a pre-activation lies within float32 rounding
of one, two float32 runs route that element's gradient differently — measured 2e-2 (input gradient)
between torch float32 and torch float64 themselves on one seed, 3e-4 between torch and flax float32 on
another. That is the kink lottery of float32, not a framework difference; float64 shows the gradient
computations are the same to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

from common import get_spec, random_input, random_weights
from common.check.train_verify import compare_train_runs
from conftest import import_backend
from harness import FULL, TRAIN_MODELS, TRAIN_SEED, pair_major, run_pairs, train_outputs, train_spec

MODELS = TRAIN_MODELS
#: The frozen-backbone step (BatchNorm pinned to inference mode, only ``fc`` trainable, the input gradient
#: through the whole backbone) is a switch over layer kinds every family shares, so the fast tier runs it on
#: one family (the one ``test_frozen_backbone_changes_only_the_head`` uses) and ``--full`` on all three.
FROZEN_MODELS = MODELS if FULL else ("shufflenet_v2_tiny",)
TRAIN_PAIRS = run_pairs(oracle=False)  # every pair of the five framework runs, over the three pytest runs
CONTINUOUS = ("forward", "loss", "num_batches_tracked")  # + every "buffers:<group>" row


def _step_cases():
    problems = [(m, d, f) for m in MODELS for d in ("float32", "float64") for f in (False, True)
                if not f or m in FROZEN_MODELS]
    return [pytest.param(m, d, (a, b), f, id=f"{m}-{d}-{a}-{b}-{'frozen' if f else 'full'}")
            for (a, b), (m, d, f) in pair_major(TRAIN_PAIRS, problems)]


@pytest.mark.parametrize("model,dtype,pair,freeze", _step_cases())
def test_train_step_matches(model, dtype, pair, freeze):
    a, b = pair
    rows = compare_train_runs(train_spec(model), dtype, a, train_outputs(a, model, dtype, freeze),
                              b, train_outputs(b, model, dtype, freeze))
    if dtype == "float32":
        rows = [r for r in rows if r.quantity in CONTINUOUS or r.quantity.startswith("buffers:")]
    assert rows
    bad = [f"{r.quantity} ({r.worst_key}): {r.max_rel:.2e}" for r in rows if not r.ok]
    assert not bad, f"{model} {dtype} {a} vs {b}: " + "; ".join(bad)


@pytest.mark.parametrize("model", MODELS)
def test_bn_statistics_follow_pytorch_rule(framework, model):
    """After one train step every running stat moved and every counter went up by exactly one."""
    spec = train_spec(model)
    before = random_weights(spec, seed=TRAIN_SEED, dtype="float64")
    after = train_outputs(framework, model, "float64")["after"]
    for key in before:
        if key.endswith("num_batches_tracked"):
            assert int(after[key]) == int(before[key]) + 1, key
        elif key.endswith(("running_mean", "running_var")):
            assert not np.allclose(after[key], before[key]), key


def test_gradients_reach_both_shuffle_attention_branches(framework):
    """Every SA tensor (both gates, the GroupNorm affine) of every block gets a gradient, in every
    framework; its values are compared across frameworks by ``test_train_step_matches``."""
    grads = train_outputs(framework, "resnext_sa_tiny", "float64")["grads"]
    sa_keys = [k for k in random_weights(train_spec("resnext_sa_tiny"), seed=TRAIN_SEED) if ".sa." in k]
    assert sorted({k.split(".")[0] for k in sa_keys}) == ["layer2", "layer4"] and len(sa_keys) == 6 * 2
    dead = [k for k in sa_keys if not np.abs(np.asarray(grads[k])).max() > 0]
    assert not dead, f"{framework}: no gradient reaches {dead}"


def test_frozen_backbone_changes_only_the_head(framework):
    spec = train_spec("shufflenet_v2_tiny")
    before = random_weights(spec, seed=TRAIN_SEED, dtype="float64")
    after = train_outputs(framework, "shufflenet_v2_tiny", "float64", freeze=True)["after"]
    changed = sorted(k for k in before if not np.array_equal(np.asarray(after[k], np.float64), before[k]))
    assert changed == ["fc.bias", "fc.weight"]


def test_one_value_per_channel_is_refused_in_training(framework):
    backend = import_backend(framework)
    spec = get_spec("shufflenet_v2_x0_5", 10)
    model = backend.build(spec)
    x = random_input((1, 3, 1, 1), 0, "float32")
    x = x if backend.DATA_FORMAT == "channels_first" else x.transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        backend.train_step_numpy(model, x, np.array([3]))
