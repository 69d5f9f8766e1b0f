"""A NumPy reference (oracle) for every IR node: NCHW, canonical weights, PyTorch semantics.

Deliberately naive — sliding windows and ``einsum``, no framework — so it shares no code path with
any backend. Tests compare each framework to it, in float64, for primitives and whole networks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import SpecError
from ..runtime.checks import check_values_per_channel
from ..spec import ir
from ..spec.shuffle import shuffle_permutation


# ------------------------------------------------------------------------------------------ primitives
def _windows(x: np.ndarray, kernel: int, stride: int, padding: int, fill: float) -> np.ndarray:
    """(N, C, H, W) → (N, C, H', W', k, k), padded symmetrically with ``fill``, floor rounding."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    return sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: int = 1,
           padding: int = 0, groups: int = 1) -> np.ndarray:
    """Grouped 2-D convolution, NCHW input, OIHW weight ``(out, in/groups, k, k)``."""
    n, c = x.shape[:2]
    out_ch, in_per_group, k, _ = weight.shape
    if c % groups or out_ch % groups or c // groups != in_per_group:
        raise SpecError(f"conv2d: input {c} / weight {weight.shape} do not fit groups={groups}")
    win = _windows(x, k, stride, padding, 0.0)  # (N, C, H', W', k, k)
    h, w = win.shape[2:4]
    win = win.reshape(n, groups, in_per_group, h, w, k, k)
    wg = weight.reshape(groups, out_ch // groups, in_per_group, k, k)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, out_ch, h, w)
    return out if bias is None else out + bias[None, :, None, None]


def depthwise_conv2d(x: np.ndarray, weight: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Depthwise conv: ``groups == in_channels``, weight ``(C·mult, 1, k, k)``."""
    return conv2d(x, weight, None, stride, padding, groups=x.shape[1])


def depthwise_separable_conv2d(x: np.ndarray, depthwise: np.ndarray, pointwise: np.ndarray,
                               stride: int = 1, padding: int = 0) -> np.ndarray:
    return conv2d(depthwise_conv2d(x, depthwise, stride, padding), pointwise)


def batch_norm(x: np.ndarray, weight, bias, running_mean, running_var, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode BatchNorm."""
    def c(v):
        return np.asarray(v)[None, :, None, None]
    return (x - c(running_mean)) / np.sqrt(c(running_var) + eps) * c(weight) + c(bias)


def max_pool2d(x: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    return _windows(x, kernel, stride, padding, -np.inf).max(axis=(-2, -1))


def avg_pool2d(x: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """``count_include_pad=True``: padded zeros are averaged in."""
    return _windows(x, kernel, stride, padding, 0.0).mean(axis=(-2, -1))


def channel_shuffle(x: np.ndarray, groups: int, convention: str = "paper") -> np.ndarray:
    return x[:, shuffle_permutation(x.shape[1], groups, convention)]


def channel_split(x: np.ndarray, sections: int = 2) -> tuple[np.ndarray, ...]:
    if sections < 1 or x.shape[1] % sections:
        raise SpecError(f"channel split: {x.shape[1]} channels are not divisible into {sections} sections")
    return tuple(np.split(x, sections, axis=1))


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    return x @ weight.T + (0 if bias is None else bias)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-x)`` written through ``tanh``: no overflow for large ``|x|``, float64-accurate."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def shuffle_attention(x: np.ndarray, cweight, cbias, sweight, sbias, gn_weight, gn_bias, groups: int,
                      eps: float = 1e-5) -> np.ndarray:
    """SA-Net's ``sa_layer`` on NCHW ``x``, literally: fold the groups into the batch, gate one half by its
    mean and the other by its per-channel GroupNorm, unfold, shuffle with 2 groups (paper direction)."""
    n, c, h, w = x.shape
    if c % (2 * groups):
        raise SpecError(f"shuffle attention: {c} channels are not divisible by 2 x groups = {2 * groups}")
    check_values_per_channel(n * groups * h * w, x.shape, "shuffle attention's GroupNorm")  # torch's, in eval too
    half = c // (2 * groups)
    sub = x.reshape(n * groups, c // groups, h, w)
    first, second = sub[:, :half], sub[:, half:]

    def col(v) -> np.ndarray:
        return np.asarray(v, dtype=np.float64).reshape(1, half, 1, 1)

    pooled = first.mean(axis=(2, 3), keepdims=True)
    channel = first * sigmoid(col(cweight) * pooled + col(cbias))
    mean, var = second.mean(axis=(2, 3), keepdims=True), second.var(axis=(2, 3), keepdims=True)
    normed = (second - mean) / np.sqrt(var + eps) * col(gn_weight) + col(gn_bias)
    spatial = second * sigmoid(col(sweight) * normed + col(sbias))
    return channel_shuffle(np.concatenate([channel, spatial], axis=1).reshape(n, c, h, w), 2)


# ------------------------------------------------------------------------------------------ IR walker
class _Scope:
    """Canonical weights under a dotted prefix. With ``calibrate`` (a mutable dict of weights), every
    BatchNorm first stores its input's batch statistics as its running statistics."""

    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str = "", calibrate: bool = False) -> None:
        self.weights, self.prefix, self.calibrate = weights, prefix, calibrate

    def child(self, name: str) -> "_Scope":
        return _Scope(self.weights, f"{self.prefix}.{name}" if self.prefix else name, self.calibrate)

    def set(self, role: str, value: np.ndarray) -> None:
        key = f"{self.prefix}.{role}" if self.prefix else role
        self.weights[key] = value.astype(np.asarray(self.weights[key]).dtype)  # type: ignore[index]

    def __getitem__(self, role: str) -> np.ndarray:
        key = f"{self.prefix}.{role}" if self.prefix else role
        return np.asarray(self.weights[key], dtype=np.float64)

    def get(self, role: str) -> np.ndarray | None:
        key = f"{self.prefix}.{role}" if self.prefix else role
        return np.asarray(self.weights[key], dtype=np.float64) if key in self.weights else None


@functools.singledispatch
def _apply(node: object, x: np.ndarray, scope: _Scope) -> np.ndarray:
    """The float64 forward of one IR node: one registered function per node class (a new layer kind
    registers its own below)."""
    raise TypeError(f"oracle cannot apply {type(node).__name__}")


@_apply.register
def _(node: ir.Conv2d, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return conv2d(x, scope["weight"], scope.get("bias"), node.stride, node.padding, node.groups)


@_apply.register
def _(node: ir.BatchNorm2d, x: np.ndarray, scope: _Scope) -> np.ndarray:
    if scope.calibrate:
        scope.set("running_mean", x.mean(axis=(0, 2, 3)))
        scope.set("running_var", x.var(axis=(0, 2, 3)))
    return batch_norm(x, scope["weight"], scope["bias"], scope["running_mean"], scope["running_var"], node.eps)


@_apply.register
def _(node: ir.ReLU, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return relu(x)


@_apply.register
def _(node: ir.MaxPool2d, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return max_pool2d(x, node.kernel_size, node.stride, node.padding)


@_apply.register
def _(node: ir.AvgPool2d, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return avg_pool2d(x, node.kernel_size, node.stride, node.padding)


@_apply.register
def _(node: ir.ChannelShuffle, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return channel_shuffle(x, node.groups, node.convention)


@_apply.register
def _(node: ir.Linear, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return linear(x, scope["weight"], scope.get("bias"))


@_apply.register
def _(node: ir.ShuffleAttention, x: np.ndarray, scope: _Scope) -> np.ndarray:
    return shuffle_attention(x, scope["cweight"], scope["cbias"], scope["sweight"], scope["sbias"],
                             scope["gn.weight"], scope["gn.bias"], node.groups, node.eps)


@_apply.register(ir.Sequential)
@_apply.register(ir.Stage)
def _(node: ir.Sequential | ir.Stage, x: np.ndarray, scope: _Scope) -> np.ndarray:
    for name, child in node.children():
        x = _apply(child, x, scope.child(name))
    return x


@_apply.register
def _(node: ir.ShuffleV2Block, x: np.ndarray, scope: _Scope) -> np.ndarray:
    if node.stride == 1:
        # Megvii's even/odd split is the inverse-direction 2-group shuffle followed by the plain split
        left, right = channel_split(x if node.routing == "chunk" else channel_shuffle(x, 2, "inverse"), 2)
        out = np.concatenate([left, _apply(node.branch2, right, scope.child("branch2"))], axis=1)
    else:
        out = np.concatenate([_apply(node.branch1, x, scope.child("branch1")),
                              _apply(node.branch2, x, scope.child("branch2"))], axis=1)
    return channel_shuffle(out, 2) if node.routing == "chunk" else out


@_apply.register
def _(node: ir.ShuffleV1Block, x: np.ndarray, scope: _Scope) -> np.ndarray:
    branch = _apply(node.branch, x, scope.child("branch"))
    if node.shortcut is None:
        return relu(x + branch)
    return relu(np.concatenate([_apply(node.shortcut, x, scope.child("shortcut")), branch], axis=1))


@_apply.register
def _(node: ir.Bottleneck, x: np.ndarray, scope: _Scope) -> np.ndarray:
    out = x
    for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "sa"):
        if getattr(node, name) is None:  # a plain (not SA-Net) bottleneck
            continue
        out = _apply(getattr(node, name), out, scope.child(name))
        if name in ("bn1", "bn2"):
            out = relu(out)
    identity = x if node.downsample is None else _apply(node.downsample, x, scope.child("downsample"))
    return relu(out + identity)


def forward(node: object, weights: Mapping[str, np.ndarray], x: np.ndarray, taps: bool = False,
            _calibrate: bool = False) -> dict[str, np.ndarray]:
    """Float64 forward of any IR node on NCHW ``x``. A network gives ``{"logits"}`` (or every stage tap
    with ``taps=True``); any other node gives ``{"output"}``."""
    x = np.asarray(x, dtype=np.float64)
    scope = _Scope(weights, calibrate=_calibrate)
    if not isinstance(node, ir.NetworkSpec):
        return {"output": _apply(node, x, scope)}
    out: dict[str, np.ndarray] = {}
    for name, layer in node.stem:
        x = _apply(layer, x, scope.child(name))
    out["stem"] = x
    for stage in node.stages:
        x = _apply(stage, x, scope.child(stage.name))
        out[stage.name] = x
    for name, layer in node.head:
        x = _apply(layer, x, scope.child(name))
    out["pre_logits"] = x = x.mean(axis=(2, 3))
    out["logits"] = _apply(node.fc, x, scope.child("fc"))
    return out if taps else {"logits": out["logits"]}


def calibrate_batch_norm(node: object, weights: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """A copy of ``weights`` whose BatchNorm running statistics are the batch statistics of ``x``
    flowing through the network (as after training), so random networks keep unit-scale activations."""
    calibrated = dict(weights)
    forward(node, calibrated, x, _calibrate=True)
    return calibrated
