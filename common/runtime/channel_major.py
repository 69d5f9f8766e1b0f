"""A whole network's eval forward with channel-major, batch-minor activations ``(C, H, W, N)``, written once
for every backend that compiles with XLA (``flax_impl``, ``keras_impl`` on JAX): their
``optimize_for_inference(model, layout="channel_major")``.

Why: XLA CPU runs a grouped 1x1 conv on channels-last activations as a matmul batched over transposed
copies; with the channels leading, a 1x1 conv *is* a matmul ``(out, in) @ (in, H·W·N)`` and a grouped one
a matmul batched over contiguous group slices — no copy (``benchmarks/grouped_pointwise.py``, row
``xla_channel_major``). A transpose in and out of each conv loses the gain, so the whole graph keeps the
layout: one transpose of the input, none after (the pooled features are ``(C, N)``). The batch is the
innermost axis because the spatial windows of a depthwise conv or a pool slice H and W: with N inside they
stay vectorisable (``(C, N, H, W)`` ran ShuffleNet V1 g8 at batch 32 in 356 ms, ``(C, H, W, N)`` in 266).

The rest follows the layout: channel split / concat / shuffle slice and reshape the leading axis; a k x k
conv with few products per output is the taps sum (:mod:`common.runtime.xla_cpu`) over contiguous windows,
any other one a matmul over its stacked windows (im2col). Every eval BatchNorm that follows a conv is
folded into it (:mod:`common.spec.fusion`, float64, at trace time), as ONNX Runtime does at load time.

Where it wins is measured, not assumed (``docs/performance.md``): at batch 32 ShuffleNet V1 g8 and
SA-ResNet-50 ran 10-17 % faster than the channels-last graph on whole batches (third round), mostly through
fewer page faults; once both run micro-batches (fourth round) channels-last is as fast or faster on all
five benchmark models, and V2, ResNeXt (grouped 3x3 taps) and batch 1 were slower all along. So
channels-last is the default and this graph the measured alternative.

Framework-free: the caller lends :class:`Kernels` (its array namespace, constants and full-precision
matmul). The weights are canonical (torchvision keys, NumPy) and become constants of the caller's ``jit``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import ir
from ..spec.fusion import conv_bn_pairs, fold_batch_norm
from ..spec.shuffle import shuffle_view
from . import xla_conv, xla_cpu

Array = Any
#: The spatial axes of a ``(C, H, W, N)`` activation.
_H, _W = 1, 2


@dataclass(frozen=True)
class Kernels:
    """What a backend lends the walk. ``xp`` spells ``reshape, transpose, pad, stack, concatenate, maximum,
    sum, sqrt`` as NumPy does (``jax.numpy``, ``keras.ops``); ``const`` makes a backend array of a NumPy
    one; ``matmul(a, b)`` is ``a @ b`` batched over a leading axis, at full precision; ``sigmoid`` the
    logistic function; ``mean(x, axes, keepdims)`` a mean in ``x``'s own dtype (Keras's ``ops.mean``
    computes float64 in float32 on JAX)."""

    xp: Any
    const: Callable[[np.ndarray], Array]
    matmul: Callable[[Array, Array], Array]
    sigmoid: Callable[[Array], Array]
    mean: Callable[[Array, tuple[int, ...], bool], Array]


class _Walk:
    """One trace of the network: canonical weights under dotted keys, the conv → BN folds, the dtype."""

    def __init__(self, spec: ir.NetworkSpec, weights: Mapping[str, np.ndarray], dtype: str,
                 kernels: Kernels) -> None:
        self.weights, self.dtype, self.k = weights, np.dtype(dtype), kernels
        leaves = dict(ir.iter_leaves(spec))
        self.folded = {conv: (bn, leaves[bn]) for conv, bn in conv_bn_pairs(spec)}  # conv path → its BN
        self.skipped = {bn for bn, _ in self.folded.values()}

    def param(self, path: str, role: str) -> np.ndarray | None:
        key = f"{path}.{role}" if path else role
        return np.asarray(self.weights[key], np.float64) if key in self.weights else None

    def const(self, value: np.ndarray) -> Array:
        return self.k.const(np.asarray(value, np.float64).astype(self.dtype))

    def chain(self, children: ir.Layers, x: Array, path: str) -> Array:
        for name, child in children:
            x = apply(child, x, self, f"{path}.{name}" if path else name)
        return x


def _column(walk: _Walk, values: np.ndarray, ndim: int = 4) -> Array:
    """Per-channel values broadcast over a channel-major array: shape ``(C, 1, ..., 1)``."""
    return walk.const(np.asarray(values).reshape((-1,) + (1,) * (ndim - 1)))


def windows(xp: Any, x: Array, kernel: int, stride: int, pad: int,
            fill: float = 0.0) -> Iterator[tuple[int, int, Array]]:
    """``(i, j, window)`` for every tap of a square k x k window op on ``(C, H, W, N)`` ``x``, PyTorch's
    symmetric padding (by ``fill``) and floor rounding (:func:`common.runtime.xla_conv.windows`)."""
    return xla_conv.windows(xp, x, (kernel, kernel), (stride, stride), pad, fill)


# ----------------------------------------------------------------------------------------- ops
@functools.singledispatch
def apply(node: object, x: Array, walk: _Walk, path: str) -> Array:
    """The channel-major eval forward of one IR node (one registered function per node class)."""
    raise TypeError(f"channel-major walk cannot apply {type(node).__name__}")


@apply.register
def _(node: ir.Conv2d, x: Array, walk: _Walk, path: str) -> Array:
    weight, bias = walk.param(path, "weight"), walk.param(path, "bias")
    if path in walk.folded:
        bn, norm = walk.folded[path]
        weight, bias = fold_batch_norm(weight, bias, walk.param(bn, "weight"), walk.param(bn, "bias"),
                                       walk.param(bn, "running_mean"), walk.param(bn, "running_var"), norm.eps)
    y = conv(node, x, weight, walk)
    return y if bias is None else y + _column(walk, bias)


def conv(node: ir.Conv2d, x: Array, weight: np.ndarray, walk: _Walk) -> Array:
    """``node`` on ``(C, H, W, N)`` ``x`` with its OIHW ``weight`` (float64 NumPy, BatchNorm folded): a matmul
    batched over the groups for 1x1, the taps sum for few products per output, else a matmul over the
    stacked windows (im2col; the whole batch at once)."""
    xp, k, s, g = walk.k.xp, node.kernel_size, node.stride, node.groups
    out, per_in = weight.shape[:2]
    if k == 1 and node.padding == 0:
        x = x[:, ::s, ::s] if s > 1 else x
        rest = tuple(x.shape[1:])
        y = _grouped_matmul(walk, weight.reshape(out, per_in), xp.reshape(x, (g, per_in, -1)), g)
        return xp.reshape(y, (out,) + rest)
    if xla_cpu.use_taps(k, k, per_in):
        kernel = weight.reshape(g, out // g, per_in, k, k)
        acc = None
        for i, j, win in windows(xp, x, k, s, node.padding):
            rest = tuple(win.shape[1:])
            win = xp.reshape(win, (g, per_in, 1) + rest)
            for c in range(per_in):
                term = win[:, c] * walk.const(kernel[:, :, c, i, j].reshape(g, out // g, 1, 1, 1))
                acc = term if acc is None else acc + term
        return xp.reshape(acc, (out,) + rest)
    cols = xp.stack([win for _, _, win in windows(xp, x, k, s, node.padding)], axis=1)  # (C, k·k, H', W', N)
    rest = tuple(cols.shape[2:])
    y = _grouped_matmul(walk, weight.reshape(out, per_in * k * k), xp.reshape(cols, (g, per_in * k * k, -1)), g)
    return xp.reshape(y, (out,) + rest)


def _grouped_matmul(walk: _Walk, weight: np.ndarray, x: Array, groups: int) -> Array:
    """``(out, in/g)`` weight times ``(g, in/g, rows)`` input, group by group: ``(out, rows)`` when ungrouped,
    ``(g, out/g, rows)`` otherwise (the caller reshapes either to ``(out, ...)``)."""
    if groups == 1:
        return walk.k.matmul(walk.const(weight), walk.k.xp.reshape(x, tuple(x.shape[1:])))
    out = weight.shape[0]
    return walk.k.matmul(walk.const(weight.reshape(groups, out // groups, -1)), x)


@apply.register
def _(node: ir.BatchNorm2d, x: Array, walk: _Walk, path: str) -> Array:
    if path in walk.skipped:  # folded into the conv before it
        return x
    scale = walk.param(path, "weight") / np.sqrt(walk.param(path, "running_var") + node.eps)
    shift = walk.param(path, "bias") - walk.param(path, "running_mean") * scale
    return x * _column(walk, scale) + _column(walk, shift)


@apply.register
def _(node: ir.ReLU, x: Array, walk: _Walk, path: str) -> Array:
    return walk.k.xp.maximum(x, 0)


@apply.register
def _(node: ir.MaxPool2d, x: Array, walk: _Walk, path: str) -> Array:
    out = None
    for _, _, win in windows(walk.k.xp, x, node.kernel_size, node.stride, node.padding, -np.inf):
        out = win if out is None else walk.k.xp.maximum(out, win)
    return out


@apply.register
def _(node: ir.AvgPool2d, x: Array, walk: _Walk, path: str) -> Array:
    total = None
    for _, _, win in windows(walk.k.xp, x, node.kernel_size, node.stride, node.padding):
        total = win if total is None else total + win
    return total * walk.const(np.asarray(1.0 / node.kernel_size ** 2))  # count_include_pad


def shuffle(xp: Any, x: Array, groups: int, convention: str = "paper") -> Array:
    """Channel shuffle on the leading axis: view ``(a, b)``, swap, flatten (:mod:`common.spec.shuffle`)."""
    a, b = shuffle_view(x.shape[0], groups, convention)
    rest = tuple(x.shape[1:])
    return xp.reshape(xp.transpose(xp.reshape(x, (a, b) + rest), (1, 0) + tuple(range(2, 2 + len(rest)))),
                      (a * b,) + rest)


@apply.register
def _(node: ir.ChannelShuffle, x: Array, walk: _Walk, path: str) -> Array:
    return shuffle(walk.k.xp, x, node.groups, node.convention)


@apply.register
def _(node: ir.ShuffleAttention, x: Array, walk: _Walk, path: str) -> Array:
    """SA-Net's ``sa_layer``: the groups are the leading axis's first factor, so each (group, half) is a
    slice and the per-(channel, sample) statistics reduce over the contiguous spatial axes."""
    xp, sig = walk.k.xp, walk.k.sigmoid
    c, rest = x.shape[0], tuple(x.shape[1:])
    half = c // (2 * node.groups)
    sub = xp.reshape(x, (node.groups, 2 * half) + rest)
    hw = (1 + _H, 1 + _W)
    first, second = sub[:, :half], sub[:, half:]

    def col(role: str) -> Array:
        return walk.const(walk.param(path, role).reshape(1, half, 1, 1, 1))

    pooled = walk.k.mean(first, hw, True)
    channel = first * sig(col("cweight") * pooled + col("cbias"))
    mean = walk.k.mean(second, hw, True)
    centred = second - mean
    var = walk.k.mean(centred * centred, hw, True)
    normed = centred / xp.sqrt(var + walk.const(np.asarray(node.eps))) * col("gn.weight") + col("gn.bias")
    spatial = second * sig(col("sweight") * normed + col("sbias"))
    return shuffle(xp, xp.reshape(xp.concatenate([channel, spatial], axis=1), (c,) + rest), 2)


@apply.register(ir.Sequential)
@apply.register(ir.Stage)
def _(node: ir.Sequential | ir.Stage, x: Array, walk: _Walk, path: str) -> Array:
    return walk.chain(node.children(), x, path)


@apply.register
def _(node: ir.ShuffleV2Block, x: Array, walk: _Walk, path: str) -> Array:
    xp = walk.k.xp
    if node.stride == 1:
        if node.routing != "chunk":  # Megvii's even/odd split: the inverse 2-group shuffle, then halves
            x = shuffle(xp, x, 2, "inverse")
        half = x.shape[0] // 2
        parts = [x[:half], apply(node.branch2, x[half:], walk, f"{path}.branch2")]
    else:
        parts = [apply(node.branch1, x, walk, f"{path}.branch1"), apply(node.branch2, x, walk, f"{path}.branch2")]
    out = xp.concatenate(parts, axis=0)
    return shuffle(xp, out, 2) if node.routing == "chunk" else out


@apply.register
def _(node: ir.ShuffleV1Block, x: Array, walk: _Walk, path: str) -> Array:
    xp = walk.k.xp
    branch = apply(node.branch, x, walk, f"{path}.branch")
    if node.shortcut is None:
        return xp.maximum(x + branch, 0)
    return xp.maximum(xp.concatenate([apply(node.shortcut, x, walk, f"{path}.shortcut"), branch], axis=0), 0)


@apply.register
def _(node: ir.Bottleneck, x: Array, walk: _Walk, path: str) -> Array:
    xp, out = walk.k.xp, x
    for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "sa"):
        if getattr(node, name) is None:
            continue
        out = apply(getattr(node, name), out, walk, f"{path}.{name}")
        if name in ("bn1", "bn2"):
            out = xp.maximum(out, 0)
    identity = x if node.downsample is None else apply(node.downsample, x, walk, f"{path}.downsample")
    return xp.maximum(out + identity, 0)


# ------------------------------------------------------------------------------------- network
def forward(spec: ir.NetworkSpec, weights: Mapping[str, np.ndarray], dtype: str, kernels: Kernels,
            x_nhwc: Array) -> Array:
    """Logits ``(N, classes)`` of ``spec`` with canonical ``weights`` on channels-last ``x_nhwc`` (already in
    ``dtype``): call it under the backend's ``jit`` so the weights become constants."""
    walk = _Walk(spec, weights, dtype, kernels)
    xp = kernels.xp
    x = xp.transpose(x_nhwc, (3, 1, 2, 0))
    x = walk.chain(spec.stem, x, "")
    for stage in spec.stages:
        x = apply(stage, x, walk, stage.name)
    x = walk.chain(spec.head, x, "")
    features = walk.k.mean(x, (_H, _W), False)  # (C, N)
    logits = kernels.matmul(walk.const(walk.param("fc", "weight")), features)
    bias = walk.param("fc", "bias")
    if bias is not None:
        logits = logits + _column(walk, bias, 2)
    return xp.transpose(logits, (1, 0))


__all__ = ["Kernels", "apply", "forward", "shuffle", "windows"]
