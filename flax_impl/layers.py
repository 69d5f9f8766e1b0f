"""IR leaf ops → Flax NNX modules, plus the channel shuffle / split tensor functions.

Every module here computes exactly what the PyTorch op of the same IR node computes (see
``docs/backend-contract.md``), in NHWC. Each keeps its IR node as ``.spec`` (frozen dataclasses are
hashable, so they are static data of the NNX graph) and its compute dtype as ``.dtype``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import ir
from common.shuffle import check_shuffle, shuffle_view

#: Full-precision matmuls / convs: on GPU/TPU the default float32 precision may use TF32/bfloat16 passes,
#: which would break the 1e-5 cross-framework tolerance. On CPU this is what XLA does anyway.
PRECISION = jax.lax.Precision.HIGHEST

_SUPPORTED_DTYPES = ("float32", "float64")


# ------------------------------------------------------------------------------------------- dtypes
def resolve_dtype(dtype: Any) -> np.dtype:
    """``"float32"`` / ``"float64"`` (or the NumPy / JAX dtype) → a NumPy dtype.

    Requesting float64 turns on ``jax_enable_x64`` (process-wide): without it JAX silently computes
    "float64" arrays in float32. float32 models stay float32 either way (every layer gets explicit
    ``dtype`` / ``param_dtype``).
    """
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be one of {_SUPPORTED_DTYPES}, got {dtype!r}") from None
    if resolved.name not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {_SUPPORTED_DTYPES}, got {dtype!r}")
    if resolved == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return resolved


def counter_dtype() -> np.dtype:
    """The integer dtype of ``num_batches_tracked``: int64 when x64 is on (PyTorch's type), else int32
    (JAX has no int64 without x64). Canonical exports are always int64."""
    return np.dtype(np.int64) if jax.config.jax_enable_x64 else np.dtype(np.int32)


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
        return jnp.asarray((np.random.default_rng(seed).standard_normal(shape) * std).astype(dtype))

    return init


def zeros_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Zeros made on the host (no per-shape XLA compile)."""
    return jnp.asarray(np.zeros(shape, dtype))


# ----------------------------------------------------------------------------- tensor functions
def channel_shuffle(x: jax.Array, groups: int, convention: str = "paper") -> jax.Array:
    """Permute the channels of an NHWC tensor (``common/shuffle.py``).

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


# -------------------------------------------------------------------------------------- modules
class Conv2d(nnx.Conv):
    """``nnx.Conv`` built from an IR :class:`~common.ir.Conv2d`: kernel ``(k, k, in/groups, out)``.

    Depthwise convs (``groups == in_channels``) are the same module with ``feature_group_count=C``
    (kernel ``(k, k, 1, C·mult)``), which is what the porting table expects.
    """

    def __init__(self, op: ir.Conv2d, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
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
        self.scale = nnx.Param(jnp.asarray(ones))
        self.bias = nnx.Param(jnp.asarray(zeros))
        self.mean = nnx.BatchStat(jnp.asarray(zeros))
        self.var = nnx.BatchStat(jnp.asarray(ones))
        # an integer variable so it ports to torch's int64 `num_batches_tracked` (see counter_dtype)
        self.num_batches_tracked = nnx.BatchStat(jnp.asarray(np.zeros((), counter_dtype())))
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

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if self.frozen:  # a frozen backbone's BatchNorm is always in inference mode (contract: transfer learning)
            use_running_average = True
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchNorm2d expects {self.num_features} channels (last axis), got shape "
                             f"{tuple(x.shape)}")
        x = jnp.asarray(x, self.dtype)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            count = x.size // self.num_features
            if count <= 1:
                raise ValueError("Expected more than 1 value per channel when training, got input of shape "
                                 f"{tuple(x.shape)} (channels last)")
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased (two-pass: no cancellation)
            unbiased = var * (count / (count - 1))
            m = self.momentum
            # running statistics are buffers, not functions of the loss
            self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
            self.var[...] = jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased)
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]


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
    """``nnx.Linear`` from an IR :class:`~common.ir.Linear`: kernel ``(in, out)`` = canonical ``weight.T``."""

    def __init__(self, op: ir.Linear, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
        dtype = resolve_dtype(dtype)
        super().__init__(op.in_features, op.out_features, use_bias=op.bias, dtype=dtype, param_dtype=dtype,
                         precision=PRECISION, kernel_init=normal_init(1.0), bias_init=zeros_init,  # LeCun normal
                         rngs=rngs)
        self.spec = op


LEAF_MODULES: dict[type, type[nnx.Module]] = {
    ir.Conv2d: Conv2d, ir.BatchNorm2d: BatchNorm2d, ir.ReLU: ReLU, ir.MaxPool2d: MaxPool2d,
    ir.AvgPool2d: AvgPool2d, ir.ChannelShuffle: ChannelShuffle, ir.Linear: Linear,
}


def build_leaf(op: object, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The module for one IR leaf op."""
    cls = LEAF_MODULES.get(type(op))
    if cls is None:
        raise TypeError(f"flax_impl cannot build {type(op).__name__}: not an IR leaf op")
    return cls(op, dtype=dtype, rngs=rngs if rngs is not None else nnx.Rngs(0))
