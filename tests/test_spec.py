"""The framework-free spec: names, channel tables, group arithmetic, parameter and FLOP figures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from common import SpecError, UnknownModelError, count_parameters, get_spec, list_models, shuffle_permutation
from common.spec.primitives import depthwise_separable_conv, grouped_conv
from common.spec.resnext import ResNeXtConfig
from common.spec.resnext import build as build_resnext
from common.spec.shufflenet_v1 import ShuffleNetV1Config
from common.spec.shufflenet_v2 import ShuffleNetV2Config
from common.spec.summary import summarize

TORCHVISION = {  # name: (parameters, GFLOPS as torchvision's model table lists them)
    "shufflenet_v2_x0_5": (1_366_792, 0.04), "shufflenet_v2_x1_0": (2_278_604, 0.145),
    "shufflenet_v2_x1_5": (3_503_624, 0.296), "shufflenet_v2_x2_0": (7_393_996, 0.583),
    "resnext50_32x4d": (25_028_904, 4.23), "resnext101_32x8d": (88_791_336, 16.414),
    "resnext101_64x4d": (83_455_272, 15.46),
}
# Megvii's ShuffleNet V1 tables (stem, stage2, stage3, stage4) and (params M, MFLOPs) without fc bias
MEGVII = {
    "shufflenet_v1_g3_x0_5": ((12, 120, 240, 480), 0.7, 38), "shufflenet_v1_g3_x1_0": ((24, 240, 480, 960), 1.9, 138),
    "shufflenet_v1_g3_x1_5": ((24, 360, 720, 1440), 3.4, 292), "shufflenet_v1_g3_x2_0": ((48, 480, 960, 1920), 5.4, 524),
    "shufflenet_v1_g8_x0_5": ((16, 192, 384, 768), 1.0, 40), "shufflenet_v1_g8_x1_0": ((24, 384, 768, 1536), 2.4, 138),
    "shufflenet_v1_g8_x1_5": ((24, 576, 1152, 2304), 4.3, 290), "shufflenet_v1_g8_x2_0": ((48, 768, 1536, 3072), 6.5, 522),
}
# SA-Net's models: parameters of the official code (wofmanaf/SA-Net models/sa_resnet.py, 1000 classes)
SA_NET = {"sa_resnet50": 25_557_740, "sa_resnet101": 44_550_684, "sa_resnext50_32x4d": 25_029_612}
PAPER_TABLE1 = {1: (144, 143), 2: (200, 140), 3: (240, 137), 4: (272, 133), 8: (384, 137)}  # stage2, MFLOPs


def test_registry_lists_every_variant():
    names = list_models()
    assert len(names) == 4 + 3 + 5 * 4 + 3 + 6 and names == sorted(names)  # + Megvii's own architectures
    assert {f"shufflenet_v1_g{g}_x{w}" for g in (1, 2, 3, 4, 8) for w in ("0_5", "1_0", "1_5", "2_0")} <= set(names)
    assert set(TORCHVISION) <= set(names) and set(SA_NET) <= set(names)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError, match="shufflenet_v2_x1_0") as info:
        get_spec("shufflenet_v2_x1")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_num_classes_is_validated(bad):
    with pytest.raises(SpecError, match="num_classes"):
        get_spec("shufflenet_v2_x0_5", bad)


@pytest.mark.parametrize("num_classes", [1, 10, 1000, 21843])
def test_num_classes_resizes_only_the_classifier(num_classes):
    spec = get_spec("resnext50_32x4d", num_classes)
    assert spec.fc.out_features == num_classes and spec.stages == get_spec("resnext50_32x4d").stages


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        get_spec("shufflenet_v2_x1_0").name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_parameter_counts_and_flops(name):
    params, gflops = TORCHVISION[name]
    summary = summarize(get_spec(name), 224)
    assert count_parameters(get_spec(name)) == params == summary.params
    assert round(summary.macs / 1e9, len(str(gflops).split(".")[1])) == gflops


@pytest.mark.parametrize("name,tables", [
    ("shufflenet_v2_x0_5", (24, 48, 96, 192, 1024)), ("shufflenet_v2_x1_0", (24, 116, 232, 464, 1024)),
    ("shufflenet_v2_x1_5", (24, 176, 352, 704, 1024)), ("shufflenet_v2_x2_0", (24, 244, 488, 976, 2048)),
])
def test_shufflenet_v2_channel_tables(name, tables):
    spec = get_spec(name)
    widths = [spec.stem[0][1].layers[0].out_channels] + [s.blocks[0].out_channels for s in spec.stages]
    assert tuple(widths + [spec.num_features]) == tables
    assert [len(s.blocks) for s in spec.stages] == [4, 8, 4]


@pytest.mark.parametrize("name", sorted(MEGVII))
def test_shufflenet_v1_matches_megvii_tables(name):
    channels, params_m, mflops = MEGVII[name]
    spec = get_spec(name)
    assert (spec.stem[0][1].layers[0].out_channels, *(s.blocks[-1].out_channels for s in spec.stages)) == channels
    no_fc_bias = count_parameters(spec) - spec.num_classes
    assert round(no_fc_bias / 1e6, 1) == params_m
    # Megvii's table rounds to whole MFLOPs; seven of eight match exactly, g3 1.0x is 137.46 vs "138"
    assert abs(summarize(spec).macs / 1e6 - mflops) <= 1.0


@pytest.mark.parametrize("groups", sorted(PAPER_TABLE1))
def test_shufflenet_v1_paper_table1(groups):
    stage2, mflops = PAPER_TABLE1[groups]
    spec = get_spec(f"shufflenet_v1_g{groups}_x1_0")
    assert [s.blocks[0].out_channels for s in spec.stages] == [stage2, 2 * stage2, 4 * stage2]
    assert abs(summarize(spec).macs / 1e6 - mflops) < 2.5  # paper rounds its own counts; ours are exact


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith("shufflenet_v1")])
def test_shufflenet_v1_unit_structure(name):
    spec = get_spec(name)
    groups = int(name.split("_g")[1].split("_")[0])
    megvii = name.endswith("_megvii")  # Megvii's order: depthwise + BN, then the inverse-direction shuffle
    for stage in spec.stages:
        for i, block in enumerate(stage.blocks):
            layers = block.branch.layers
            first, _, _, shuffle, dw, _, last, _ = layers[:3] + layers[5:6] + layers[3:5] + layers[6:] if megvii else layers
            assert first.groups == (1 if (stage.name, i) == ("stage2", 0) else groups)
            assert shuffle.groups == groups and shuffle.convention == ("inverse" if megvii else "paper")
            assert dw.is_depthwise and dw.out_channels == block.out_channels // 4
            assert last.groups == groups
            expected = block.out_channels - block.in_channels if block.stride == 2 else block.out_channels
            assert last.out_channels == expected and (block.shortcut is not None) == (block.stride == 2)


def test_resnext_bottleneck_widths_follow_torchvision():
    spec = get_spec("resnext101_32x8d")
    widths = [stage.blocks[0].conv2.out_channels for stage in spec.stages]
    assert widths == [int(p * 8 / 64) * 32 for p in (64, 128, 256, 512)] == [256, 512, 1024, 2048]
    assert [len(s.blocks) for s in spec.stages] == [3, 4, 23, 3]
    assert all(s.blocks[0].downsample is not None for s in spec.stages)
    assert all(b.downsample is None for s in spec.stages for b in s.blocks[1:])


def test_custom_resnext_builds_small_networks():
    spec = build_resnext("tiny", ResNeXtConfig((1, 1, 1, 1), groups=4, width_per_group=4), 10)
    assert [len(s.blocks) for s in spec.stages] == [1, 1, 1, 1] and spec.num_classes == 10
    assert spec.stages[0].blocks[0].conv2.groups == 4


def test_indivisible_groups_name_the_layer():
    from common.spec.shufflenet_v1 import build as build_v1
    with pytest.raises(SpecError, match=r"layer 'stage2\.0\.branch\.6'.*groups=3"):
        build_v1("bad", ShuffleNetV1Config(groups=3, stage_channels=(240, 480, 960), stem_channels=25))
    with pytest.raises(SpecError, match="stage2.*groups=7"):
        ShuffleNetV1Config(groups=7, stage_channels=(240, 480, 960))
    with pytest.raises(SpecError, match="even"):
        ShuffleNetV2Config(stages_out_channels=(24, 117, 232, 464, 1024))
    with pytest.raises(SpecError, match="grouped conv.*groups=4"):
        grouped_conv(6, 8, groups=4)


def test_channel_shuffle_conventions():
    assert shuffle_permutation(12, 3).tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert shuffle_permutation(12, 3, "inverse").tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    paper, inverse = shuffle_permutation(12, 3), shuffle_permutation(12, 3, "inverse")
    assert (paper[inverse] == np.arange(12)).all() and (inverse[paper] == np.arange(12)).all()
    assert (shuffle_permutation(9, 3) == shuffle_permutation(9, 3, "inverse")).all()  # equal only when C == g²
    with pytest.raises(SpecError, match="divisible"):
        shuffle_permutation(10, 3)
    with pytest.raises(SpecError, match="convention"):
        shuffle_permutation(12, 3, "megvii-ish")


def test_depthwise_separable_parameter_arithmetic():
    assert count_parameters(grouped_conv(4, 8, 3)) == 288
    separable = depthwise_separable_conv(4, 8, 3)
    assert [count_parameters(layer) for layer in separable.layers] == [36, 32]
    assert count_parameters(separable) == 68


def test_common_imports_no_framework():
    code = ("import sys, common, common.check.verify, common.cli, common.check.oracle, common.spec.summary;"
            "bad = [m for m in ('torch', 'tensorflow', 'jax', 'keras', 'flax') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


@pytest.mark.parametrize("name", sorted(SA_NET))
def test_sa_net_parameter_counts_and_official_keys(name):
    """The official counts, and the official checkpoint's keys: a torchvision bottleneck's, with the six
    ``sa`` tensors between ``bn3`` and ``downsample`` (``SABottleneck`` registers ``sa`` before it)."""
    from common.spec.params import canonical_params
    spec = get_spec(name)
    assert count_parameters(spec) == SA_NET[name] == summarize(spec).params
    keys = list(canonical_params(spec))
    plain = get_spec(name.removeprefix("sa_")) if "resnext" in name else None
    first = keys[keys.index("layer1.0.bn3.num_batches_tracked") + 1:keys.index("layer1.0.downsample.0.weight")]
    assert first == [f"layer1.0.sa.{role}" for role in ("cweight", "cbias", "sweight", "sbias", "gn.weight", "gn.bias")]
    blocks = sum(len(stage.blocks) for stage in spec.stages)
    assert sum(k.split(".")[2] == "sa" for k in keys if k.startswith("layer")) == 6 * blocks
    if plain is not None:  # SA-ResNeXt = torchvision's ResNeXt + the sa tensors, nothing else
        assert [k for k in keys if ".sa." not in k] == list(canonical_params(plain))
    shapes = {k: p.shape for k, p in canonical_params(spec).items()}
    assert shapes["layer4.2.sa.cweight"] == (1, 16, 1, 1) and shapes["layer1.0.sa.gn.bias"] == (2,)


def test_shuffle_attention_channels_must_split_into_group_halves():
    from common.spec.ir import ShuffleAttention
    assert ShuffleAttention(256, 64).branch_channels == 2
    for channels, groups in [(96, 64), (6, 2), (0, 1), (8, 0)]:
        with pytest.raises(SpecError, match="ShuffleAttention"):
            ShuffleAttention(channels, groups)
    with pytest.raises(SpecError, match=r"layer 'layer1.0'.sa: ShuffleAttention: 256 channels .* = 192"):
        build_resnext("tiny", ResNeXtConfig((1, 1, 1, 1), attention_groups=96))


def test_summary_counts_shuffle_attention():
    """Each layer adds ``C/2 + 3/2 · C · H · W`` multiply-adds (gate affines and products) and 3 · C/G
    parameters; its shape is its input's."""
    from common.spec.ir import ShuffleAttention
    from common.spec.summary import trace
    assert trace(ShuffleAttention(256, 64), (256, 7, 5)) == ((256, 7, 5), 128 + 128 * 35 + 256 * 35)
    sa, plain = summarize(get_spec("sa_resnext50_32x4d")), summarize(get_spec("resnext50_32x4d"))
    stage_sizes = {"layer1": (256, 56), "layer2": (512, 28), "layer3": (1024, 14), "layer4": (2048, 7)}
    blocks = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
    for ours, theirs in zip(sa.stages, plain.stages):
        c, hw = stage_sizes.get(ours.name, (0, 0))
        assert ours.macs - theirs.macs == blocks.get(ours.name, 0) * (c // 2 + 3 * c // 2 * hw * hw)
        assert ours.params - theirs.params == blocks.get(ours.name, 0) * 3 * c // 64


@pytest.mark.parametrize("name,peak", [
    ("shufflenet_v2_x1_0", 24 * 112 * 112),   # the stem conv's output
    ("sa_resnet50", 64 * 112 * 112),          # the stem conv's output (= layer1's 256 x 56 x 56)
    ("resnext101_64x4d", 512 * 56 * 56),      # inside a block: layer2.0's conv1 (width 512) before its stride
])
def test_peak_activation(name, peak):
    """The largest tensor of one row at 224 x 224, which sizes torch's micro-batches."""
    from common.spec.summary import peak_activation
    assert peak_activation(get_spec(name), 224) == peak
