"""IR leaf ops → Flax NNX modules, plus the channel shuffle / split tensor functions.

Every module here computes exactly what the PyTorch op of the same IR node computes (see
``docs/backend-contract.md``), in NHWC. Each keeps its IR node as ``.spec`` (frozen dataclasses are
hashable, so they are static data of the NNX graph) and its compute dtype as ``.dtype``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.runtime import shuffle_attention, xla_conv
from common.runtime.checks import check_values_per_channel
from common.runtime.dtypes import dtype_name
from common.runtime.xla_cpu import split_groups, use_taps
from common.spec import ir
from common.spec.shuffle import check_shuffle, shuffle_view

#: Full-precision matmuls / convs: on GPU/TPU the default float32 precision may use TF32/bfloat16 passes,
#: which would break the 1e-5 cross-framework tolerance. On CPU this is what XLA does anyway.
PRECISION = jax.lax.Precision.HIGHEST

# ------------------------------------------------------------------------------------------- dtypes
def resolve_dtype(dtype: Any) -> np.dtype:
    """``"float32"`` / ``"float64"`` (or the NumPy / JAX dtype) → a NumPy dtype.

    Requesting float64 turns on ``jax_enable_x64`` (process-wide): without it JAX silently computes
    "float64" arrays in float32. float32 models stay float32 either way (every layer gets explicit
    ``dtype`` / ``param_dtype``).
    """
    resolved = np.dtype(dtype_name(dtype))
    if resolved == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return resolved


def counter_dtype() -> np.dtype:
    """The integer dtype of ``num_batches_tracked``: int64 when x64 is on (PyTorch's type), else int32
    (JAX has no int64 without x64). Canonical exports are always int64."""
    return np.dtype(np.int64) if jax.config.jax_enable_x64 else np.dtype(np.int32)


def from_host(array: np.ndarray) -> jax.Array:
    """A host (NumPy) array on the default device, as is: ``jax.device_put``.

    ``jnp.asarray`` of a NumPy array binds ``lax.stage``, which outside a trace compiles one XLA program per
    shape and dtype (jax 0.10): 14-41 compiles, 0.3-0.8 s, for every network built or loaded."""
    return jax.device_put(np.asarray(array))


# ------------------------------------------------------------------------------------- initialisers
def normal_init(gain: float) -> Callable[..., jax.Array]:
    """``N(0, gain / fan_in)`` with ``fan_in = prod(shape[:-1])`` (HWIO ``k·k·in/groups``; dense ``in``).

    Drawn on the host from a NumPy generator seeded by the JAX key: ``jax.random`` compiles one XLA
    program per distinct shape, which made building a network take 10+ s of compilation; this takes
    milliseconds and is still a deterministic function of ``rngs``. Under tracing (``nnx.eval_shape``,
    init inside ``jit``) it falls back to ``jax.random.normal``.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        std = float(np.sqrt(gain / max(1, int(np.prod(shape[:-1])))))
        if isinstance(key, jax.core.Tracer):
            return (jax.random.normal(key, shape, dtype) * std).astype(dtype)
        raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        seed = np.asarray(raw).ravel().tolist()
        return from_host((np.random.default_rng(seed).standard_normal(shape) * std).astype(dtype))

    return init


def zeros_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Zeros made on the host (no per-shape XLA compile)."""
    return from_host(np.zeros(shape, dtype))


# ----------------------------------------------------------------------------- tensor functions
def channel_shuffle(x: jax.Array, groups: int, convention: str = "paper") -> jax.Array:
    """Permute the channels of an NHWC tensor (``common/spec/shuffle.py``).

    ``"paper"``: view channels as ``(g, C/g)``, swap, flatten; ``"inverse"``: view as ``(C/g, g)``.
    Raises ``ValueError`` (``SpecError``) for a bad convention or channels not divisible by ``groups``.
    """
    if x.ndim < 2:
        raise ValueError(f"channel_shuffle expects a channels-last tensor, got shape {tuple(x.shape)}")
    *lead, channels = x.shape
    a, b = shuffle_view(channels, groups, convention)  # validates convention and divisibility
    return jnp.swapaxes(x.reshape(*lead, a, b), -1, -2).reshape(*lead, channels)


def channel_split(x: jax.Array, sections: int = 2) -> tuple[jax.Array, ...]:
    """Equal channel slices of a channels-last tensor (``torch.chunk`` on the channel axis)."""
    if isinstance(sections, bool) or not isinstance(sections, (int, np.integer)) or sections < 1:
        raise ValueError(f"channel_split: sections must be a positive integer, got {sections!r}")
    if x.ndim < 2:
        raise ValueError(f"channel_split expects a channels-last tensor, got shape {tuple(x.shape)}")
    channels = x.shape[-1]
    if channels % sections:
        raise ValueError(f"channel_split: {channels} channels are not divisible into {sections} equal sections")
    return tuple(jnp.split(x, int(sections), axis=-1))


# ------------------------------------------------------------------------------ convolution paths
# XLA's CPU convolution is slow for grouped / depthwise / 1x1 convs (common.runtime.xla_cpu has the
# measurements), so the "auto" path rewrites each conv shape into what XLA does fast. Every path computes the
# same sum of products as lax.conv (only the summation order differs) from the stored HWIO kernel.

ConvImpl = Literal["auto", "lax"]
CONV_IMPLS: tuple[str, ...] = ("auto", "lax")

#: Paths whose eval-mode BatchNorm is folded into the kernel (see :func:`conv_bn`).
FOLD_PATHS: frozenset[str] = frozenset({"taps"})


def check_conv_impl(impl: str) -> str:
    """Validate an ``impl`` name (``"auto"`` or ``"lax"``)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    return impl


def conv_path(op: ir.Conv2d, impl: str = "auto", dtype: Any = "float32") -> str:
    """Which formulation computes ``op`` in ``dtype``: ``"lax"``, ``"matmul"``, ``"taps"`` or ``"split"``.

    Chosen per shape from measurements on a 2-core x86 CPU (XLA CPU, batch 1 and 32):
    dense 1x1 → one matmul (1.3-2x faster than lax.conv); grouped 1x1 → one matmul batched over the
    groups (ShuffleNet V1 g3 whole network, batch 32: 366 ms as lax.conv, 240 as per-group matmuls;
    batch 1 about 20% faster; :func:`conv_grouped_matmul`);
    few products per output (depthwise, the 3-channel stem, narrow groups) → shifted multiply-adds
    (10-40x on depthwise, 2-6x on 4/8-channel groups); wider groups → one dense conv per group,
    concatenated (3-7x). The 7x7 stem stays on lax. In float64 a grouped conv is never split: XLA
    compiles each float64 op to its own loop, so splitting costs the group count in compile time
    (``common.runtime.xla_cpu.split_groups``).
    """
    if check_conv_impl(impl) == "lax":
        return "lax"
    per_group_in = op.in_channels // op.groups
    grouped = "split" if split_groups(dtype) else "lax"
    if op.kernel_size == 1 and op.padding == 0:
        return "matmul" if op.groups == 1 else grouped
    if use_taps(op.kernel_size, op.kernel_size, per_group_in):
        return "taps"
    return grouped if op.groups > 1 else "lax"


def conv2d(x: jax.Array, kernel: jax.Array, op: ir.Conv2d, path: str) -> jax.Array:
    """``op`` (no bias) on NHWC ``x`` with an HWIO ``kernel``, computed the ``path`` way."""
    s, p, g = op.stride, op.padding, op.groups
    if path == "matmul":
        return conv_matmul(x, kernel, s)
    if path == "taps":
        return conv_taps(x, kernel, s, p, g)
    if path == "split":
        return conv_split(x, kernel, s, p, g)
    if path == "lax":
        return conv_lax(x, kernel, s, p, g)
    raise ValueError(f"unknown conv path {path!r}")


def conv_lax(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array:
    """One ``conv_general_dilated`` with explicit symmetric padding (what ``nnx.Conv`` does)."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups, precision=PRECISION)


def conv_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A dense 1x1 conv (no padding) as a matmul over channels: XLA's GEMM beats its conv for this."""
    x = xla_conv.subsample(x, (stride, stride))
    return jnp.einsum("nhwi,io->nhwo", x, kernel[0, 0], precision=PRECISION)


def shifted_taps(x: jax.Array, size: int, stride: int, pad: int) -> Iterator[tuple[int, int, jax.Array]]:
    """``(dy, dx, x_pad[:, dy::stride, dx::stride][:ho, :wo])`` for every kernel tap of a VALID conv on the
    zero-padded input, read through stride² phases (:func:`common.runtime.xla_conv.windows`)."""
    return xla_conv.windows(jnp, x, (size, size), (stride, stride), pad)


def conv_taps(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array:
    """:func:`taps_sum`, differentiated as the same conv on ``lax`` when it is a dense conv (``groups == 1``:
    the ShuffleNet stems, 3 input channels at full resolution). Autodiff of the taps sum there is one
    full-resolution reduction per term for the kernel gradient; XLA's conv gradient is 6x faster (Flax V2 train
    step, batch 16 at 224 x 224, float32: 1586 → 254 ms; its first call 10.9 → 7.7 s). A grouped conv with
    several input channels per group (ResNeXt) contracts each tap once (:func:`_taps_with_tap_gradient`:
    ResNeXt-50 step, batch 8, 6.2-8.0 → 3.8-4.7 s, first call 44.5 → 29.2 s). Depthwise taps (one input
    channel) keep autodiff's gradient, which trained faster than ``lax``'s (1586 vs 1868 ms)."""
    if groups == 1:
        return _taps_with_conv_gradient(x, kernel, stride, pad, 1)
    if kernel.shape[2] > 1:  # grouped, several input channels per group (ResNeXt's 3x3)
        return _taps_with_tap_gradient(x, kernel, stride, pad, groups)
    return taps_sum(x, kernel, stride, pad, groups)


def _taps_forward(x: jax.Array, kernel: jax.Array, stride: int, pad: int,
                  groups: int) -> tuple[jax.Array, tuple]:
    """The forward of both custom-gradient taps convs below: the taps sum, keeping its inputs."""
    return taps_sum(x, kernel, stride, pad, groups), (x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _taps_with_conv_gradient(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array:
    return taps_sum(x, kernel, stride, pad, groups)


def _conv_backward(stride: int, pad: int, groups: int, saved: tuple,
                   cotangent: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = saved
    return jax.vjp(lambda a, b: conv_lax(a, b, stride, pad, groups), x, kernel)[1](cotangent)


_taps_with_conv_gradient.defvjp(_taps_forward, _conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _taps_with_tap_gradient(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array:
    """:func:`taps_sum` of a grouped conv, differentiated one contraction per tap — kernel gradient
    ``Σ_nhw tap[n,h,w,g,j] · dy[n,h,w,g,o]``, tap gradient ``Σ_o dy[n,h,w,g,o] · k[g,j,o]`` — where autodiff
    of the sum makes one per tap *and* input channel (ResNeXt's 4-channel groups: 9 instead of 36 each)."""
    return taps_sum(x, kernel, stride, pad, groups)


def _grouped_taps_backward(stride: int, pad: int, groups: int, saved: tuple,
                           cotangent: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = saved
    size, _, per_in, out = kernel.shape
    taps, scatter = jax.vjp(lambda a: [tap for _, _, tap in shifted_taps(a, size, stride, pad)], x)
    lead = cotangent.shape[:3]
    dy = cotangent.reshape(*lead, groups, out // groups)
    kernel = kernel.reshape(size * size, per_in, groups, out // groups)  # taps dy-major, as shifted_taps
    tap_grads = [jnp.einsum("nhwgo,jgo->nhwgj", dy, kernel[t], precision=PRECISION).reshape(*lead, groups * per_in)
                 for t in range(size * size)]
    kernel_grad = [jnp.einsum("nhwgj,nhwgo->jgo", tap.reshape(*lead, groups, per_in), dy,
                              precision=PRECISION).reshape(per_in, out) for tap in taps]
    return scatter(tap_grads)[0], jnp.stack(kernel_grad).reshape(size, size, per_in, out)


_taps_with_tap_gradient.defvjp(_taps_forward, _grouped_taps_backward)


def taps_sum(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array:
    """Any conv (depthwise included) as k·k·in/groups shifted broadcast multiply-adds that XLA fuses into
    one loop (:func:`common.runtime.xla_conv.taps_sum`)."""
    return xla_conv.taps_sum(jnp, x, kernel, groups, (stride, stride), pad)


def conv_split(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array:
    """A grouped conv as one dense product per group (XLA CPU's grouped conv is 3-7x slower): for 1x1
    groups one batched matmul (:func:`conv_grouped_matmul`), otherwise one dense conv per group,
    concatenated (:func:`common.runtime.xla_conv.per_group`)."""
    if kernel.shape[:2] == (1, 1) and pad == 0:
        return conv_grouped_matmul(x, kernel, stride, groups)
    return xla_conv.per_group(jnp, x, kernel, groups, lambda a, b: conv_lax(a, b, stride, pad, 1))


def conv_grouped_matmul(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> jax.Array:
    """A grouped 1x1 conv (no padding) as one matmul batched over the groups: the input transposed to
    ``(groups, rows, in/groups)``, one ``dot_general`` with the group as batch dimension, transposed back.

    The same dot products as one matmul per group (bit-identical in a whole V1 network), without a slice
    per group: XLA compiles each slice as a kernel of its own (579 of V1 g8's 830), so ShuffleNet V1 g8
    1.0x's first call took 8.9 CPU-s that way and 3.1 this way, and it runs faster too (batch 32 at 224:
    446 → 409 ms; g3: 293 → 263 ms; batch 1: 13.3 → 10.8 / 9.1 → 8.6 ms; 2026-12-02, interleaved). Written
    as an einsum over the NHWC view instead, XLA lays the product out channel-major (1.2-1.6x slower).
    The arithmetic is :func:`common.runtime.xla_conv.grouped_matmul`'s; the matmul is ``dot_general`` at
    :data:`PRECISION`."""
    x = xla_conv.subsample(x, (stride, stride))
    return xla_conv.grouped_matmul(jnp, x, kernel[0, 0], groups, _batched_matmul)


def _batched_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` batched over the leading axis, at full precision."""
    return jax.lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,))), precision=PRECISION)


# -------------------------------------------------------------------------------------- modules
class Conv2d(nnx.Conv):
    """``nnx.Conv`` built from an IR :class:`~common.spec.ir.Conv2d`: kernel ``(k, k, in/groups, out)``.

    Depthwise convs (``groups == in_channels``) are the same module with ``feature_group_count=C``
    (kernel ``(k, k, 1, C·mult)``), which is what the porting table expects.

    ``impl`` picks how the conv is computed, never what it stores: ``"auto"`` (default) the fastest XLA CPU
    formulation for the op's shape (:func:`conv_path`), ``"lax"`` plain ``nnx.Conv`` (one
    ``conv_general_dilated``). Switch a whole model with :func:`flax_impl.set_conv_impl`.
    """

    def __init__(self, op: ir.Conv2d, *, dtype: Any = "float32", rngs: nnx.Rngs, impl: ConvImpl = "auto") -> None:
        dtype = resolve_dtype(dtype)
        pad = op.padding
        super().__init__(
            op.in_channels, op.out_channels, (op.kernel_size, op.kernel_size),
            strides=(op.stride, op.stride),
            # explicit symmetric padding: Flax's default "SAME" pads only the high side at stride 2 (PyTorch pads both)
            padding=((pad, pad), (pad, pad)),
            feature_group_count=op.groups,  # depthwise: groups == in_channels
            use_bias=op.bias,
            dtype=dtype, param_dtype=dtype, precision=PRECISION,
            kernel_init=normal_init(2.0), bias_init=zeros_init,  # He normal (fan_in = k·k·in/groups)
            rngs=rngs,
        )
        self.spec = op
        self.impl = check_conv_impl(impl)
        self.fold_bn = "taps"  # "all" only where the weights are compile-time constants (optimize_for_inference)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl == "lax":
            return super().__call__(x)
        return self.apply_kernel(x, self.kernel[...], None if self.bias is None else self.bias[...])

    def apply_kernel(self, x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
        """This conv with the given (possibly BatchNorm-folded) ``kernel`` / ``bias``, on the ``impl`` path."""
        if x.ndim != 4 or x.shape[-1] != self.spec.in_channels:
            raise ValueError(f"Conv2d expects NHWC input with {self.spec.in_channels} channels, "
                             f"got shape {tuple(x.shape)}")
        y = conv2d(jnp.asarray(x, self.dtype), kernel, self.spec, conv_path(self.spec, self.impl, self.dtype))
        return y if bias is None else y + bias


class BatchNorm2d(nnx.Module):
    """BatchNorm with PyTorch semantics over the last (channel) axis.

    Eval (``use_running_average=True``): ``(x - mean) / sqrt(var + eps) * scale + bias``.
    Train: normalise with the batch mean and *biased* batch variance, then
    ``mean = (1 - m)·mean + m·batch_mean``, ``var = (1 - m)·var + m·unbiased_batch_var`` (m = 0.1, PyTorch's
    momentum = weight of the new batch; Flax's own ``nnx.BatchNorm`` uses the opposite convention and the
    biased variance) and ``num_batches_tracked += 1``.
    Starts in train mode, like a fresh ``torch.nn.BatchNorm2d``; ``model.eval()`` / ``model.train()`` flip
    ``use_running_average``. ``frozen`` (set by :func:`flax_impl.freeze_backbone`) pins inference mode:
    running statistics are used and never updated, whatever ``use_running_average`` or the call says.
    """

    def __init__(self, op: ir.BatchNorm2d, *, dtype: Any = "float32", rngs: nnx.Rngs | None = None,
                 use_running_average: bool = False) -> None:
        del rngs  # deterministic init (ones / zeros), as PyTorch
        dtype = resolve_dtype(dtype)
        shape = (op.num_features,)
        ones, zeros = np.ones(shape, dtype), np.zeros(shape, dtype)  # host arrays: no per-shape compile
        self.scale = nnx.Param(from_host(ones))
        self.bias = nnx.Param(from_host(zeros))
        self.mean = nnx.BatchStat(from_host(zeros))
        self.var = nnx.BatchStat(from_host(ones))
        # an integer variable so it ports to torch's int64 `num_batches_tracked` (see counter_dtype)
        self.num_batches_tracked = nnx.BatchStat(from_host(np.zeros((), counter_dtype())))
        self.spec = op
        self.num_features = op.num_features
        self.epsilon = op.eps
        self.momentum = op.momentum
        self.dtype = dtype
        self.use_running_average = use_running_average
        self.frozen = False  # static flag (part of the jit cache key), flipped by freeze_backbone / unfreeze

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Lets ``nnx.view(model, use_running_average=...)`` switch modes without mutating the model."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def uses_running_stats(self, use_running_average: bool | None = None) -> bool:
        """Whether a call normalises with the running statistics (eval mode, or a frozen backbone)."""
        if use_running_average is None:
            use_running_average = self.use_running_average
        # a frozen backbone's BatchNorm is always in inference mode (contract: transfer learning)
        return bool(use_running_average) or self.frozen

    def folded_affine(self) -> tuple[jax.Array, jax.Array]:
        """Eval-mode BatchNorm as ``x · scale + shift`` (``scale = weight / sqrt(var + eps)``)."""
        scale = jax.lax.rsqrt(self.var[...] + self.epsilon) * self.scale[...]
        return scale, self.bias[...] - self.mean[...] * scale

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = self.uses_running_stats(use_running_average)
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm2d expects {self.num_features} channels (last axis), got shape "
                             f"{tuple(x.shape)}")
        x = jnp.asarray(x, self.dtype)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            count = x.size // self.num_features
            check_values_per_channel(count, x.shape, "batch norm, channels last")
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased (two-pass: no cancellation)
            unbiased = var * (count / (count - 1))
            m = self.momentum
            # running statistics are buffers, not functions of the loss. set_value, not `v[...] = `: under
            # jit the indexed form asks the tracer for its sharding, and JAX answers with an error message
            # that scans the whole program traced so far, which makes a network's trace quadratic
            # (ResNeXt-50 train mode: 7.1 of 7.5 s, 1.2 s with set_value)
            self.mean.set_value(jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean))
            self.var.set_value(jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased))
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]


def conv_bn(conv: Conv2d, bn: BatchNorm2d, x: jax.Array) -> jax.Array:
    """``bn(conv(x))``; in eval mode on a ``FOLD_PATHS`` conv the BatchNorm is folded into it at trace time
    (``kernel·scale``, ``bias·scale + shift``, as ONNX Runtime does at load time).

    By default (``conv.fold_bn == "taps"``) only the taps path folds: its kernel is tiny and scale/shift
    then vanish into the fused multiply-add loop. Under ``jit`` the params are inputs, so folding a matmul /
    conv kernel rescales all of it on every call, while XLA still needs its separate bias/ReLU pass:
    ResNeXt-50 at batch 1 went 114 → 176 ms. When the weights are compile-time constants
    (:func:`flax_impl.optimize_for_inference` sets ``fold_bn="all"``), XLA folds the product once at compile
    time and every path folds. Stored parameters are untouched; train mode (batch statistics) and
    ``impl="lax"`` never fold.
    """
    if (conv.impl == "lax" or not bn.uses_running_stats() or bn.num_features != conv.spec.out_channels
            or (conv.fold_bn != "all" and conv_path(conv.spec, conv.impl, conv.dtype) not in FOLD_PATHS)):
        return bn(conv(x))
    scale, shift = bn.folded_affine()
    kernel = conv.kernel[...] * scale  # HWIO: the output channel is the last axis
    bias = shift if conv.bias is None else conv.bias[...] * scale + shift
    return conv.apply_kernel(x, kernel, bias)


class ReLU(nnx.Module):
    """``max(x, 0)``."""

    def __init__(self, op: ir.ReLU | None = None, *, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> None:
        self.spec = op if op is not None else ir.ReLU()
        self.dtype = resolve_dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class MaxPool2d(nnx.Module):
    """PyTorch max-pool: pad with -inf (so padding never wins), VALID window max, floor rounding."""

    def __init__(self, op: ir.MaxPool2d, *, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> None:
        self.spec = op
        self.dtype = resolve_dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.spec.kernel_size, self.spec.stride, self.spec.padding
        # explicit -inf padding on every side, then VALID: output = floor((H + 2p - k) / s) + 1, as PyTorch
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
        # init is a concrete NumPy scalar so JAX picks its differentiable reduce_window_max primitive
        return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")


class AvgPool2d(nnx.Module):
    """PyTorch average pool with ``count_include_pad=True``: zero-pad, VALID window sum / (k·k)."""

    def __init__(self, op: ir.AvgPool2d, *, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> None:
        self.spec = op
        self.dtype = resolve_dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.spec.kernel_size, self.spec.stride, self.spec.padding
        # explicit zero padding, and the divisor is always the full window (padded zeros count)
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        summed = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, (1, k, k, 1), (1, s, s, 1), "VALID")
        return summed / (k * k)


class ChannelShuffle(nnx.Module):
    """The IR's channel shuffle as a (weightless) module."""

    def __init__(self, op: ir.ChannelShuffle, *, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> None:
        check_shuffle(op.groups, op.groups, op.convention)  # convention check; channels checked per call
        self.spec = op
        self.dtype = resolve_dtype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return channel_shuffle(x, self.spec.groups, self.spec.convention)


class Linear(nnx.Linear):
    """``nnx.Linear`` from an IR :class:`~common.spec.ir.Linear`: kernel ``(in, out)`` = canonical ``weight.T``."""

    def __init__(self, op: ir.Linear, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
        dtype = resolve_dtype(dtype)
        super().__init__(op.in_features, op.out_features, use_bias=op.bias, dtype=dtype, param_dtype=dtype,
                         precision=PRECISION, kernel_init=normal_init(1.0), bias_init=zeros_init,  # LeCun normal
                         rngs=rngs)
        self.spec = op


class ShuffleAttention(nnx.Module):
    """Shuffle Attention (SA-Net, Zhang & Yang 2021): the official ``sa_layer``'s numerics, channels last.

    The ``C`` channels form ``groups`` sub-features of consecutive channels, each split into two halves of
    ``c = C / (2·groups)``: the first is gated by its mean over H × W (``x · σ(cweight · mean + cbias)``), the
    second by its per-channel GroupNorm (``x · σ(sweight · gn(x) + sbias)``); the halves go back in place and
    the result is channel-shuffled with 2 groups (paper direction). Parameters: ``cweight`` ``cbias``
    ``sweight`` ``sbias`` ``(c,)`` and ``gn`` (an ``nnx.GroupNorm`` with one channel per group, PyTorch's
    eps 1e-5) holding ``gn.scale`` / ``gn.bias``, at the official init (gates σ(1), GroupNorm identity).

    Computed on an ``(N, H, W, groups, 2, c)`` view, never moving the groups into the batch. The GroupNorm
    is written out (in :mod:`common.runtime.shuffle_attention`, shared with Keras) with ``gn``'s parameters
    rather than called: ``nnx.GroupNorm`` normalises over every
    non-batch axis of its input (it would mix the groups axis in) and the normalisation here is two-pass
    (mean of squared deviations; ``E[x²] - E[x]²`` cancels in float32). A Flax user makes one directly with
    :meth:`from_channels`, e.g. ``self.sa = ShuffleAttention.from_channels(256, groups=64)`` in any module.
    """

    def __init__(self, op: ir.ShuffleAttention, *, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> None:
        del rngs  # deterministic init, as PyTorch: the caller's key stream (the other layers' init) is untouched
        dtype = resolve_dtype(dtype)
        c = op.branch_channels
        zeros, ones = np.zeros((c,), dtype), np.ones((c,), dtype)  # host arrays: no per-shape compile
        self.cweight = nnx.Param(from_host(zeros))
        self.cbias = nnx.Param(from_host(ones))
        self.sweight = nnx.Param(from_host(zeros))
        self.sbias = nnx.Param(from_host(ones))
        self.gn = nnx.GroupNorm(c, num_groups=c, epsilon=op.eps, dtype=dtype, param_dtype=dtype,
                                use_fast_variance=False,  # two-pass, should anyone call ``gn`` itself
                                scale_init=lambda key, shape, dt: from_host(np.ones(shape, dt)),
                                bias_init=lambda key, shape, dt: from_host(np.zeros(shape, dt)),
                                rngs=nnx.Rngs(0))
        self.spec = op
        self.dtype = dtype

    @classmethod
    def from_channels(cls, channels: int, groups: int = 64, *, eps: float = 1e-5, dtype: Any = "float32",
                      rngs: nnx.Rngs | None = None) -> ShuffleAttention:
        """``ShuffleAttention(ir.ShuffleAttention(channels, groups, eps))``: SA-Net's ``sa_layer(channels,
        groups)`` for use in any NHWC module. ``SpecError`` (a ``ValueError``) unless ``2·groups | channels``."""
        return cls(ir.ShuffleAttention(channels, groups, eps), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        op = self.spec
        if x.ndim != 4 or x.shape[-1] != op.channels:
            raise ValueError(f"ShuffleAttention expects NHWC input with {op.channels} channels, "
                             f"got shape {tuple(x.shape)}")
        n, h, w, channels = x.shape
        # torch.nn.GroupNorm (so the official layer) refuses one value per channel, in eval mode too
        check_values_per_channel(n * op.groups * h * w, x.shape, "shuffle attention's GroupNorm, channels last")
        params = [v[...] for v in (self.cweight, self.cbias, self.sweight, self.sbias, self.gn.scale, self.gn.bias)]
        out = shuffle_attention.gated_halves(jnp, jnp.asarray(x, self.dtype), (n, h, w), channels, op.groups,
                                             params, op.eps, lambda t: jnp.mean(t, axis=(1, 2), keepdims=True),
                                             jax.nn.sigmoid, jax.lax.rsqrt)
        return channel_shuffle(out, 2, "paper")


LEAF_MODULES: dict[type, type[nnx.Module]] = {
    ir.Conv2d: Conv2d, ir.BatchNorm2d: BatchNorm2d, ir.ReLU: ReLU, ir.MaxPool2d: MaxPool2d,
    ir.AvgPool2d: AvgPool2d, ir.ChannelShuffle: ChannelShuffle, ir.Linear: Linear,
    ir.ShuffleAttention: ShuffleAttention,
}


def build_leaf(op: object, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The module for one IR leaf op."""
    cls = LEAF_MODULES.get(type(op))
    if cls is None:
        raise TypeError(f"flax_impl cannot build {type(op).__name__}: not an IR leaf op")
    return cls(op, dtype=dtype, rngs=rngs if rngs is not None else nnx.Rngs(0))
