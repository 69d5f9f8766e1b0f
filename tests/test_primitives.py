"""Primitives in every framework vs the NumPy oracle and vs each other, weights moved through
``export_weights`` / ``load_weights``; hypothesis over channels, groups, stride, odd/even/non-square."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from common import SpecError, random_input, random_weights
from common.check.compare import BOUNDS, compare
from common.check.oracle import channel_shuffle as oracle_shuffle
from common.check.oracle import channel_split as oracle_split
from common.check.verify import run_framework
from common.spec import ir
from common.spec.primitives import depthwise_conv, depthwise_separable_conv, grouped_conv
from harness import native_layout, primitive_output, to_numpy, to_tensor
from conftest import FRAMEWORKS, import_backend

DTYPES = ("float32", "float64")


def assert_framework_matches(framework: str, node: object, x_shape: tuple[int, ...], dtype: str, seed: int = 0):
    """``framework`` vs the oracle and vs every other framework, on one weight set and input (each party's
    output computed once per run: hypothesis draws the same cases for every ``framework``)."""
    mine = primitive_output(framework, node, x_shape, dtype, seed)
    for other in ("numpy", *FRAMEWORKS):
        if other == framework:
            continue
        theirs = primitive_output(other, node, x_shape, dtype, seed)
        max_abs, max_rel = compare(mine, theirs)
        assert max_rel <= BOUNDS[dtype], (f"{framework} vs {other} on {node}, input {x_shape}, {dtype}: "
                                          f"max rel {max_rel:.3e} (max |Δ| {max_abs:.3e})")


#: One seed for every ``framework`` and dtype of a hypothesis test (pytest-hypothesis otherwise seeds each
#: parametrised case apart): every framework is checked against all others on the same drawn cases, so
#: each party's output for a case is computed once per run (``harness.primitive_output``), not once per
#: framework under test, and the Keras re-runs find the other parties' outputs in the store.
CASE_SEED = 20261202


@st.composite
def conv_cases(draw, depthwise: bool = False):
    groups = draw(st.sampled_from([1, 2, 3, 4, 8]))
    in_ch = groups * draw(st.integers(1, 4))
    if depthwise:
        node = depthwise_conv(in_ch, draw(st.sampled_from([3, 5])), draw(st.sampled_from([1, 2])),
                              multiplier=draw(st.integers(1, 2)))
    else:
        node = grouped_conv(in_ch, groups * draw(st.integers(1, 4)), draw(st.sampled_from([1, 3])),
                            draw(st.sampled_from([1, 2])), groups, bias=draw(st.booleans()))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    return node, (draw(st.sampled_from([1, 2])), in_ch, h, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@seed(CASE_SEED)
@given(case=conv_cases())
def test_grouped_conv(framework, dtype, case):
    node, shape = case
    assert_framework_matches(framework, node, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@seed(CASE_SEED)
@given(case=conv_cases(depthwise=True))
def test_depthwise_conv(framework, dtype, case):
    node, shape = case
    assert_framework_matches(framework, node, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("stride,size", [(1, (8, 8)), (2, (8, 8)), (2, (9, 7)), (2, (1, 1))])
def test_depthwise_separable_conv(framework, dtype, stride, size):
    assert_framework_matches(framework, depthwise_separable_conv(6, 10, 3, stride), (2, 6, *size), dtype)


@st.composite
def shuffle_attention_cases(draw):
    """SA-Net's layer: G groups of 2·c channels (c per half), any spatial size down to 1 × 1, where the
    GroupNorm over one value per channel and sample gives PyTorch's degenerate but defined ``gn.bias`` —
    unless batch × groups is 1 too, which PyTorch refuses (and so must every party)."""
    groups = draw(st.sampled_from([1, 2, 3, 4, 64]))
    node = ir.ShuffleAttention(2 * groups * draw(st.integers(1, 3)), groups)
    h, w = draw(st.sampled_from([1, 2, 5, 8])), draw(st.sampled_from([1, 3, 7]))
    return node, (draw(st.sampled_from([1, 2])), node.channels, h, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@seed(CASE_SEED)
@given(case=shuffle_attention_cases())
def test_shuffle_attention(framework, dtype, case):
    node, shape = case
    if shape[0] * node.groups * shape[2] * shape[3] == 1:
        # One value per GroupNorm channel in all: PyTorch's group_norm refuses it (eval mode too), so must all.
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            primitive_output(framework, node, shape, dtype, 0)
        return
    assert_framework_matches(framework, node, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@seed(CASE_SEED)
@given(case=shuffle_attention_cases())
def test_torch_shuffle_attention_on_channels_last_memory(dtype, case):
    """torch's layer takes another formulation on channels-last memory (the inference path's layout: one
    affine gate per channel, no NCHW copy) — against the oracle on the same cases, output channels-last."""
    import torch
    import torch_impl
    node, shape = case
    if shape[0] * node.groups * shape[2] * shape[3] == 1:
        return  # refused, as test_shuffle_attention shows for every layout
    layer = torch_impl.build(node, dtype=dtype, weights=random_weights(node, 0, "float64"))
    x = torch.from_numpy(random_input(shape, 1, "float64").astype(dtype)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = layer(x)
    assert shape[2] * shape[3] == 1 or got.is_contiguous(memory_format=torch.channels_last)
    max_abs, max_rel = compare(got.numpy(), primitive_output("numpy", node, shape, dtype, 0))
    assert max_rel <= BOUNDS[dtype], f"{node} {shape} {dtype}: max rel {max_rel:.3e} (max |Δ| {max_abs:.3e})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("shape", [(2, 16, 1, 1), (1, 16, 1, 6), (3, 16, 9, 7)])
def test_shuffle_attention_fixed_shapes(framework, dtype, shape):
    """The degenerate 1 × 1 map (one value per GroupNorm channel and sample: the output is ``gn.bias``,
    as PyTorch's) and a 1-pixel-high one always, whatever hypothesis draws."""
    assert_framework_matches(framework, ir.ShuffleAttention(16, 4), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("node", [
    ir.BatchNorm2d(6), ir.MaxPool2d(3, 2, 1), ir.AvgPool2d(3, 2, 1), ir.ReLU(),
    ir.ChannelShuffle(3), ir.ChannelShuffle(3, "inverse"), ir.ChannelShuffle(2),
], ids=lambda n: repr(n))
@pytest.mark.parametrize("size", [(8, 8), (9, 7), (2, 3)])
def test_leaf_ops(framework, dtype, node, size):
    assert_framework_matches(framework, node, (2, 6, *size), dtype)


def test_stride2_padding_is_symmetric(framework):
    """The TF/Flax "same" trap: on even sizes bottom/right-only padding differs from PyTorch by O(1)."""
    node = grouped_conv(4, 4, 3, 2, groups=2)
    weights = random_weights(node, 3, "float64")
    x = random_input((1, 4, 8, 8), 4, "float64")
    ours = run_framework(framework, node, weights, x, "float64")["output"]
    padded = np.pad(x, ((0, 0), (0, 0), (0, 2), (0, 2)))  # what "same" would see: 0 top/left, 1+ bottom/right
    from common.check.oracle import conv2d
    same_style = conv2d(padded, weights["weight"], None, 2, 0, 2)[:, :, :4, :4]
    assert compare(ours, same_style)[0] > 1e-3  # the trap is real on this input ...
    assert compare(ours, run_framework("numpy", node, weights, x, "float64")["output"])[1] <= 1e-12  # ... and avoided


@pytest.mark.parametrize("convention", ["paper", "inverse"])
@pytest.mark.parametrize("channels,groups", [(12, 3), (12, 4), (8, 2), (9, 3), (16, 8)])
def test_channel_shuffle_function(framework, convention, channels, groups):
    backend = import_backend(framework)
    x = random_input((2, channels, 3, 5), 0, "float32")
    out = backend.channel_shuffle(to_tensor(framework, native_layout(framework, x)), groups, convention)
    assert np.array_equal(to_numpy(framework, out), native_layout(framework, oracle_shuffle(x, groups, convention)))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("convention", ["paper", "inverse"])
def test_torch_shuffle_keeps_memory_format(channels_last, convention):
    """torch_impl shuffles channels-last storage in place of layout (one copy, no NCHW round trip), and
    ``concat_shuffle`` (ShuffleNet V2's cat + 2-group shuffle in one copy) is exactly cat then shuffle."""
    import torch
    import torch_impl
    from torch_impl.layers import concat_shuffle
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = random_input((2, 12, 3, 5), 0, "float32")
    t = torch.from_numpy(x).contiguous(memory_format=fmt)
    out = torch_impl.channel_shuffle(t, 3, convention)
    assert np.array_equal(out.numpy(), oracle_shuffle(x, 3, convention))
    assert out.is_contiguous(memory_format=fmt)
    a, b = t[:, :6], t[:, 6:]
    a, b = a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)
    fused = concat_shuffle(a, b)
    assert np.array_equal(fused.numpy(), oracle_shuffle(x, 2, "paper"))
    assert fused.is_contiguous(memory_format=fmt)
    with pytest.raises(ValueError, match="equal halves"):
        concat_shuffle(a, b[:, :4])


@pytest.mark.parametrize("sections", [1, 2, 4])
def test_channel_split_function(framework, sections):
    backend = import_backend(framework)
    x = random_input((2, 8, 3, 5), 0, "float32")
    parts = backend.channel_split(to_tensor(framework, native_layout(framework, x)), sections)
    expected = oracle_split(x, sections)
    assert len(parts) == sections
    for got, want in zip(parts, expected):
        assert np.array_equal(to_numpy(framework, got), native_layout(framework, want))


def test_bad_group_counts_raise_clear_errors(framework):
    backend = import_backend(framework)
    x = to_tensor(framework, native_layout(framework, random_input((1, 10, 2, 2), 0, "float32")))
    with pytest.raises(ValueError, match="divisible"):
        backend.channel_shuffle(x, 3)
    with pytest.raises(ValueError, match="divisible"):
        backend.channel_split(x, 3)
    with pytest.raises(SpecError, match="groups"):
        grouped_conv(10, 12, groups=4)


@pytest.mark.parametrize("node,shape", [(ir.ShuffleAttention(4, 1), (1, 4, 1, 1)),
                                        (ir.ShuffleAttention(16, 1), (1, 16, 1, 1))])
def test_shuffle_attention_refuses_one_value_per_channel_as_pytorch(framework, node, shape):
    """Batch 1, one group, 1 × 1 map: the GroupNorm sees one value per channel in all, which
    ``torch.nn.GroupNorm`` refuses (in eval mode too); the oracle and every backend refuse it alike."""
    for party in ("numpy", framework):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            primitive_output(party, node, shape, "float64", 0)


def test_shuffle_attention_refuses_channels_it_cannot_halve(framework):
    """Each backend's public layer, made the way its users make one, names the problem: 96 channels
    cannot form 64 groups of two equal halves (the official layer fails later, inside a reshape)."""
    backend = import_backend(framework)
    message = r"96 channels are not divisible by 2 x groups = 128"
    with pytest.raises(ValueError, match=message):
        if framework == "torch":
            backend.ShuffleAttention(96, groups=64)
        elif framework == "keras":
            import keras
            backend.ShuffleAttention(groups=64)(keras.Input((8, 8, 96)))
        else:
            backend.ShuffleAttention.from_channels(96, groups=64)


#: (conv, the path flax_impl's "auto" picks for it in float32, NCHW input): one case per fast path, odd sizes
#: included. In float64 the "split" cases are one lax conv (``common.runtime.xla_cpu.split_groups``).
FLAX_PATH_CASES = [
    (depthwise_conv(6, 3, 2, multiplier=2), "taps", (2, 6, 9, 7)),
    (grouped_conv(3, 8, 3, 2), "taps", (2, 3, 11, 8)),  # 3-channel stem
    (grouped_conv(16, 24, 3, 1, groups=4, bias=True), "taps", (2, 16, 7, 6)),  # 4 per group (ResNeXt layer1)
    (grouped_conv(32, 32, 3, 2, groups=2), "split", (2, 32, 9, 8)),  # 16 per group: per-group dense convs
    (grouped_conv(8, 12, 1, 2), "matmul", (2, 8, 7, 5)),
    (grouped_conv(6, 12, 1, 1, groups=3), "split", (2, 6, 5, 5)),  # grouped 1x1: per-group matmuls
    (grouped_conv(6, 12, 1, 2, groups=3), "split", (2, 6, 7, 6)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv,path,shape", FLAX_PATH_CASES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_flax_fast_conv_paths_match_lax(conv, path, shape, dtype):
    """flax_impl's "auto" conv (+ eval-mode BatchNorm, folded on the taps path) vs ``impl="lax"`` and the oracle."""
    flax_impl = import_backend("flax")
    from common.check.compare import to_nhwc
    from flax_impl.layers import conv_path
    path = path if dtype == "float32" or path != "split" else "lax"  # float64 never splits (common.runtime.xla_cpu)
    assert conv_path(conv, "auto", dtype) == path and conv_path(conv, "lax", dtype) == "lax"
    node = ir.Sequential((conv, ir.BatchNorm2d(conv.out_channels)))
    weights = random_weights(node, 0, "float64")
    x = random_input(shape, 1, "float64")
    oracle = to_nhwc(run_framework("numpy", node, weights, x, dtype)["output"])
    outs = {}
    for impl in ("auto", "lax"):
        model = flax_impl.set_conv_impl(flax_impl.build(node, dtype=dtype), impl)
        flax_impl.load_weights(model, weights)
        outs[impl] = flax_impl.forward_numpy(model, to_nhwc(x).astype(dtype))["output"]
    for a, b, what in ((outs["auto"], oracle, "auto vs numpy"), (outs["lax"], oracle, "lax vs numpy"),
                       (outs["auto"], outs["lax"], "auto vs lax")):
        max_abs, max_rel = compare(a, b)
        assert max_rel <= BOUNDS[dtype], f"{conv} {dtype} {what}: max rel {max_rel:.3e} (max |Δ| {max_abs:.3e})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("framework", ["keras"])
@pytest.mark.parametrize("node,size,xla_conv", [
    (depthwise_conv(6, 3, 1), (9, 7), False), (depthwise_conv(4, 3, 2, multiplier=2, bias=True), (8, 8), False),
    (grouped_conv(12, 6, 1, 1, 3), (5, 6), "float64"), (grouped_conv(6, 12, 1, 2, 3, bias=True), (7, 7), "float64"),
    (grouped_conv(16, 16, 3, 2, 8), (9, 8), False), (grouped_conv(3, 8, 7, 2, 1), (13, 11), True),
    (grouped_conv(3, 8, 3, 2, 1), (9, 9), False), (grouped_conv(8, 8, 1, 2, 1, bias=True), (7, 6), False),
    (grouped_conv(16, 24, 3, 1, 4, bias=True), (7, 6), False),  # 4 per group (ResNeXt layer1): taps
    (grouped_conv(32, 32, 3, 2, 2), (9, 8), True),  # 16 per group: per-group dense convs
])
def test_keras_fast_conv_paths_compiled(framework, dtype, node, size, xla_conv):
    """Keras convs pick a formulation per backend *and* per compiler (TF graph vs XLA): the compiled
    ``predict_on_batch`` (XLA on TF via ``jit_compile=True``; jitted on JAX) must match the oracle too.
    On JAX, only the convs ``common.runtime.xla_cpu`` leaves to XLA may reach its convolution op (``xla_conv``: always,
    never, or ``"float64"``: a grouped conv that float32 splits per group and float64 leaves whole)."""
    keras_impl = import_backend("keras")
    import keras
    weights = random_weights(node, 0, "float64")
    x = random_input((2, node.in_channels, *size), 1, "float64")
    expected = run_framework("numpy", node, weights, x, dtype)["output"]
    model = keras_impl.build(node, dtype=dtype)
    keras_impl.load_weights(model, weights)
    if keras.backend.backend() == "jax":
        import jax
        jaxpr = str(jax.make_jaxpr(lambda v: model(v, training=False))(x.transpose(0, 2, 3, 1).astype(dtype)))
        expected_conv = xla_conv == dtype if isinstance(xla_conv, str) else xla_conv
        assert ("conv_general_dilated" in jaxpr) == expected_conv, f"{node} {dtype}: XLA conv expected {expected_conv}"
    for jit in ((True, False) if keras.backend.backend() == "tensorflow" else ("auto",)):  # TF: XLA and graph
        model.compile(jit_compile=jit)
        out = np.asarray(model.predict_on_batch(np.ascontiguousarray(x.transpose(0, 2, 3, 1).astype(dtype))))
        assert out.dtype == np.dtype(dtype)
        max_abs, max_rel = compare(out.transpose(0, 3, 1, 2), expected)
        assert max_rel <= BOUNDS[dtype], f"{node}, {dtype}, jit {jit}: max rel {max_rel:.3e} (max |Δ| {max_abs:.3e})"
