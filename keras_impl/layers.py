"""Registered Keras layers with PyTorch numerics, the two tensor functions, and IR leaf op → layers.

Imports only ``keras`` (+ NumPy, ``common``), so it runs on the TensorFlow, JAX and torch Keras backends.
Every layer here is channels-last (NHWC) and registered under ``package="groupnets"`` so a ``.keras``
file loads with ``safe_mode=True`` (no ``Lambda``, no pickled code).
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import keras
import numpy as np
from keras import ops

from common.runtime import shuffle_attention, xla_conv
from common.runtime.checks import check_values_per_channel
from common.runtime.xla_cpu import split_groups, use_taps
from common.spec import ir
from common.spec.shuffle import CONVENTIONS

_REGISTER = keras.saving.register_keras_serializable(package="groupnets")

#: Layer name of a weighted leaf op built on its own (its canonical layer path is empty).
BARE_LAYER_NAMES = {ir.Conv2d: "conv2d", ir.BatchNorm2d: "batchnorm2d", ir.Linear: "linear",
                    ir.ShuffleAttention: "shuffle_attention"}


# ------------------------------------------------------------------------------------------- names
def keras_name(*parts: str) -> str:
    """The Keras layer name for a canonical dotted path (+ optional suffixes such as ``"pad"``).

    TensorFlow and JAX take the dotted path as is (``"stage2.0.branch2.3"``). The torch backend keys
    every variable by ``"{layer name}/{variable}"`` in a ``torch.nn.ParameterDict``, which rejects
    ``"."``, so there the dots become ``"_"`` (``"stage2_0_branch2_3"``). Porting never depends on
    this: export/load map canonical paths through this one function.
    """
    name = ".".join(p for p in parts if p)
    return name.replace(".", "_") if keras.backend.backend() == "torch" else name


def weight_layer_name(path: str, op: object) -> str:
    """Name of the Keras layer holding ``op``'s weights (a bare primitive has an empty path)."""
    return keras_name(path) if path else BARE_LAYER_NAMES[type(op)]


# --------------------------------------------------------------------------------- tensor functions
def _static_channels(x) -> int | None:
    dim = x.shape[-1]
    return None if dim is None else int(dim)


def channel_shuffle(x, groups: int, convention: str = "paper"):
    """Channel shuffle of an NHWC (any rank, channels last) tensor; see :mod:`common.spec.shuffle`.

    ``"paper"``: view channels as ``(g, C/g)``, swap, flatten; ``"inverse"``: view as ``(C/g, g)``.
    On a symbolic ``KerasTensor`` this returns the :class:`ChannelShuffle` layer's output, so it can
    be used inside a functional model and still save.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown shuffle convention {convention!r}; use one of {CONVENTIONS}")
    groups = int(groups)
    channels = _static_channels(x)
    if groups < 1 or (channels is not None and channels % groups):
        raise ValueError(f"channel_shuffle: {channels} channels are not divisible by groups={groups}")
    if keras.backend.is_keras_tensor(x):
        return ChannelShuffle(groups, convention)(x)
    lead = tuple(ops.shape(x)[:-1])  # dynamic N, H, W (tensors under tf.function) are fine here
    per_group = -1 if channels is None else channels // groups
    view = (groups, per_group) if convention == "paper" else (per_group, groups)
    y = ops.reshape(x, (*lead, *view))
    y = ops.swapaxes(y, -1, -2)
    # the static channel count, not -1: with dynamic N, H, W a -1 would leave the channels unknown too
    return ops.reshape(y, (*lead, -1 if channels is None else channels))


def channel_split(x, sections: int = 2) -> tuple:
    """``sections`` equal slices of the channel (last) axis, like ``torch.chunk(x, sections, dim=1)``."""
    sections = int(sections)
    channels = _static_channels(x)
    if channels is None:
        raise ValueError("channel_split needs a static channel count (last axis), got None")
    if sections < 1 or channels % sections:
        raise ValueError(f"channel_split: {channels} channels are not divisible by sections={sections}")
    if keras.backend.is_keras_tensor(x):
        return tuple(ChannelSplit(sections)(x))
    return tuple(ops.split(x, sections, axis=-1))


# ------------------------------------------------------------------------------------------ layers
@_REGISTER
class ChannelShuffle(keras.layers.Layer):
    """Channel shuffle as a serialisable layer (never a ``Lambda``, which ``safe_mode`` refuses)."""

    def __init__(self, groups: int, convention: str = "paper", **kwargs) -> None:
        super().__init__(**kwargs)
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown shuffle convention {convention!r}; use one of {CONVENTIONS}")
        self.groups = int(groups)
        self.convention = convention

    def call(self, inputs):
        return channel_shuffle(inputs, self.groups, self.convention)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels % self.groups:
            raise ValueError(f"{self.name}: {channels} channels are not divisible by groups={self.groups}")
        return tuple(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": self.groups, "convention": self.convention}


@_REGISTER
class ChannelSplit(keras.layers.Layer):
    """``sections`` equal channel slices (ShuffleNet V2's ``x.chunk(2, dim=1)``), a list of outputs."""

    def __init__(self, sections: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sections = int(sections)

    def call(self, inputs):
        return list(channel_split(inputs, self.sections))

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.sections:
            raise ValueError(f"{self.name}: {channels} channels are not divisible by sections={self.sections}")
        return [(*input_shape[:-1], channels // self.sections) for _ in range(self.sections)]

    def get_config(self) -> dict:
        return {**super().get_config(), "sections": self.sections}


@_REGISTER
class NegInfPadding2D(keras.layers.Layer):
    """Symmetric spatial padding with ``-inf`` (NHWC), so a following VALID max-pool never picks a pad
    value — PyTorch's max-pool padding semantics."""

    def __init__(self, padding: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs):
        p = self.padding
        return ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=float("-inf"))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        grow = lambda d: None if d is None else d + 2 * self.padding  # noqa: E731
        return (n, grow(h), grow(w), c)

    def get_config(self) -> dict:
        return {**super().get_config(), "padding": self.padding}


def exact_mean(x, axis: int | tuple[int, ...], keepdims: bool = False):
    """``ops.mean`` that keeps the input's dtype on every backend, as ``sum / count``.

    Keras's ``ops.mean`` computes float64 in float32 on the JAX and torch backends. ``count`` comes from
    the dynamic shape, so TensorFlow traces with unknown dims work too.
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    dims = ops.shape(x)
    count = 1
    for i in axes:
        count = count * dims[i]
    if isinstance(count, int):  # straight into the dtype: never through float32 (counts past 2**24)
        count = ops.convert_to_tensor(np.asarray(count, dtype=keras.backend.standardize_dtype(x.dtype)))
    return ops.sum(x, axis=axes, keepdims=keepdims) / ops.cast(count, x.dtype)


def _compute_dtype(dtype) -> str:
    """float16/bfloat16 → float32 for reductions; every other float dtype (float64!) stays as is."""
    name = keras.backend.standardize_dtype(dtype)
    return "float32" if name in ("float16", "bfloat16") else name


@_REGISTER
class Linear(keras.layers.Dense):
    """``Dense`` that keeps float64 in float64 on every backend.

    Keras's torch backend runs ``ops.matmul`` of two float64 tensors in float32 (its type promotion maps
    float64 to float32 off TensorFlow); ``einsum`` keeps the dtype. Other dtypes use ``Dense`` as is.
    """

    def call(self, inputs, training=None):
        if keras.backend.standardize_dtype(self.compute_dtype) != "float64":
            return super().call(inputs, training=training)
        y = ops.einsum("...i,io->...o", inputs, ops.cast(self.kernel, inputs.dtype))
        if self.use_bias:
            y = y + ops.cast(self.bias, inputs.dtype)
        return self.activation(y) if self.activation is not None else y


@_REGISTER
class GlobalMeanPooling2D(keras.layers.GlobalAveragePooling2D):
    """Mean over H, W (NHWC → NC), keeping float64 exact on every backend.

    ``ops.mean`` (used by ``GlobalAveragePooling2D``) computes float64 in float32 on the JAX and torch
    backends; ``sum / count`` does not. Other dtypes use the parent as is.
    """

    def call(self, inputs):
        if keras.backend.standardize_dtype(inputs.dtype) != "float64" or self.data_format != "channels_last":
            return super().call(inputs)
        return exact_mean(inputs, (1, 2), self.keepdims)


def _counter_dtype() -> str:
    """int64 like PyTorch's ``num_batches_tracked``, except on JAX without x64 (int64 is truncated to
    int32 there anyway, with a warning per variable)."""
    if keras.backend.backend() == "jax":
        probe = ops.convert_to_tensor(np.zeros((), "int64"))
        return keras.backend.standardize_dtype(probe.dtype)
    return "int64"


@_REGISTER
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """``BatchNormalization`` with PyTorch's numerics and state, so weights and training port 1:1.

    * ``epsilon=1e-5`` (Keras default 1e-3); ``momentum`` is Keras's (weight of the *old* value), so
      PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here.
    * training: normalise with the batch mean and *biased* batch variance (two-pass, identical on every
      backend; Keras's own ``ops.moments`` uses E[x²]−E[x]² on some backends), update
      ``moving_variance`` with the *unbiased* variance, and count ``num_batches_tracked`` (int).
    * fewer than 2 values per channel in training raises PyTorch's ValueError (checked when the shape
      is static; under ``tf.function`` with unknown dims it cannot be checked).
    * Keras's freezing rule is kept: ``trainable=False`` runs in inference mode (fine-tuning idiom).
    """

    def __init__(self, axis: int = -1, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs) -> None:
        if kwargs.get("renorm") or kwargs.get("synchronized"):
            raise ValueError("TorchBatchNormalization supports neither renorm nor synchronized")
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        self.num_batches_tracked = None

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self.num_batches_tracked = self.add_weight(
            shape=(), dtype=_counter_dtype(), initializer="zeros", trainable=False,
            name="num_batches_tracked", autocast=False,
        )

    def _broadcast(self, v, ndim: int):
        """A per-channel vector shaped to broadcast against the input along ``self.axis``."""
        if self.axis in (-1, ndim - 1):
            return v
        shape = [1] * ndim
        shape[self.axis] = -1
        return ops.reshape(v, shape)

    def call(self, inputs, training=None):
        # Half precision is normalised in float32 (as Keras does). Not via keras.backend.result_type:
        # on the JAX/torch backends it maps float64 to float32 and would silently demote float64 models.
        x = ops.cast(inputs, _compute_dtype(inputs.dtype))
        ndim = len(x.shape)
        axes = tuple(i for i in range(ndim) if i != self.axis % ndim)
        if training and self.trainable:
            static = [x.shape[i] for i in axes]
            check_values_per_channel(math.prod(static) if None not in static else None, x.shape,
                                     "batch norm, channels last")
            mean = exact_mean(x, axes)
            var = exact_mean(ops.square(x - self._broadcast(mean, ndim)), axes)  # biased (PyTorch)
            dims = ops.shape(x)
            count = ops.cast(math.prod(dims[i] for i in axes), x.dtype)
            unbiased = var * count / (count - 1.0)  # running_var uses the unbiased estimate (PyTorch)
            m = self.momentum
            self.moving_mean.assign(ops.cast(
                ops.cast(self.moving_mean, x.dtype) * m + ops.stop_gradient(mean) * (1.0 - m),
                self.moving_mean.dtype))
            self.moving_variance.assign(ops.cast(
                ops.cast(self.moving_variance, x.dtype) * m + ops.stop_gradient(unbiased) * (1.0 - m),
                self.moving_variance.dtype))
            self.num_batches_tracked.assign(self.num_batches_tracked + ops.cast(1, self.num_batches_tracked.dtype))
        else:
            mean = ops.cast(self.moving_mean, x.dtype)
            var = ops.cast(self.moving_variance, x.dtype)
        scale = self._scale(var, x.dtype)
        if not training or not self.trainable:
            # Inference: one multiply-add per value with per-channel alpha/beta precomputed, as PyTorch's
            # CPU eval kernel computes it (x * alpha + (bias - mean * alpha)): two passes over the
            # activation instead of three, and the same rounding as the model being ported.
            shift = -mean * scale
            if self.center:
                shift = shift + ops.cast(self.beta, x.dtype)
            y = x * self._broadcast(scale, ndim) + self._broadcast(shift, ndim)
            return ops.cast(y, self.compute_dtype)
        y = (x - self._broadcast(mean, ndim)) * self._broadcast(scale, ndim)
        if self.center:
            y = y + self._broadcast(ops.cast(self.beta, x.dtype), ndim)
        return ops.cast(y, self.compute_dtype)

    def _scale(self, var, dtype):
        """``gamma / sqrt(var + eps)``; epsilon straight into ``dtype``: ``ops.cast(1e-5, "float64")``
        would round it through float32 first."""
        scale = ops.rsqrt(var + ops.convert_to_tensor(self.epsilon, dtype=dtype))
        return scale * ops.cast(self.gamma, dtype) if self.scale else scale


@_REGISTER
class ShuffleAttention(keras.layers.Layer):
    """Shuffle Attention (SA-Net, Zhang & Yang 2021) on NHWC input, the official ``sa_layer``'s numerics.

    The C channels are ``groups`` runs of consecutive channels, each split into two halves of
    ``c = C / (2·groups)``: the first is gated by its spatial mean, ``x · σ(cweight · mean(x) + cbias)``,
    the second by its GroupNorm with one channel per group, ``x · σ(sweight · gn(x) + sbias)`` (per
    sample and channel over H × W, biased variance, ``epsilon`` 1e-5 as ``torch.nn.GroupNorm`` — not
    ``keras.layers.GroupNormalization``'s 1e-3); the halves go back in place and the result is
    channel-shuffled with 2 groups (paper direction). The ``c``-vectors ``cweight, cbias, sweight, sbias,
    gamma, beta`` are created in that order (the official ``state_dict`` order, which ``.weights.h5``
    files rely on) with the official initial values 0, 1, 0, 1, 1, 0.

    Computed on a ``(N, H, W, groups, 2, c)`` view (:mod:`common.runtime.shuffle_attention`, shared with
    Flax), never by folding the groups into the batch; means are ``sum / count`` and the variance two-pass (mean of squared deviations), so float64 stays float64 on
    every backend and float32 does not lose the variance to cancellation. Half precision is computed in
    float32, as :class:`TorchBatchNormalization` does.
    """

    def __init__(self, groups: int = 64, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(groups) < 1:
            raise ValueError(f"ShuffleAttention: groups must be >= 1, got {groups}")
        self.groups = int(groups)
        self.epsilon = float(epsilon)
        self.branch_channels: int | None = None

    def _branch_channels(self, channels: int | None) -> int:
        """``C / (2·groups)``, checked at build time: the official layer only fails later, in a shape error."""
        if channels is None:
            raise ValueError(f"{self.name}: ShuffleAttention needs a static channel count (last axis), got None")
        if channels % (2 * self.groups):
            raise ValueError(f"{self.name}: {channels} channels are not divisible by 2 x groups = "
                             f"{2 * self.groups} (each of the {self.groups} groups splits into two equal halves)")
        return channels // (2 * self.groups)

    def build(self, input_shape) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: ShuffleAttention takes NHWC input (rank 4), got shape {input_shape}")
        channels = input_shape[-1]
        c = self._branch_channels(channels)
        self.branch_channels = c
        for name, init in (("cweight", "zeros"), ("cbias", "ones"), ("sweight", "zeros"), ("sbias", "ones"),
                           ("gamma", "ones"), ("beta", "zeros")):
            setattr(self, name, self.add_weight(shape=(c,), initializer=init, name=name))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def call(self, inputs):
        static = inputs.shape[:3]
        # torch.nn.GroupNorm (so the official layer) refuses one value per channel, in eval mode too
        check_values_per_channel(math.prod(static) * self.groups if None not in static else None, inputs.shape,
                                 "shuffle attention's GroupNorm, channels last")
        x = ops.cast(inputs, _compute_dtype(inputs.dtype))
        dtype = x.dtype
        dims = ops.shape(x)  # dynamic N, H, W (tensors under tf.function) are fine here
        params = [ops.cast(v, dtype) for v in (self.cweight, self.cbias, self.sweight, self.sbias, self.gamma,
                                               self.beta)]
        y = shuffle_attention.gated_halves(
            ops, x, tuple(dims[:3]), int(x.shape[-1]), self.groups, params,
            # epsilon straight into dtype: ops.cast(1e-5, "float64") would round it through float32 first
            ops.convert_to_tensor(self.epsilon, dtype=dtype),
            lambda t: exact_mean(t, (1, 2), keepdims=True), ops.sigmoid, ops.rsqrt)
        return ops.cast(channel_shuffle(y, 2, "paper"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        self._branch_channels(input_shape[-1])
        return tuple(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


# ------------------------------------------------------------------------------- fast convolutions
# Eval speed (issue 6): each conv picks, per Keras backend and op shape, the formulation that runs fastest
# on CPU (measured on the 2-core machine, batch 1 and 32, 224x224 networks). The variables, their names,
# shapes and order are exactly Keras's own (these classes subclass the layers whose variables they keep),
# so porting, .keras and .weights.h5 files are unchanged: the class *names* stay ``Conv2D`` /
# ``DepthwiseConv2D`` on purpose, because a .weights.h5 file keys each layer by its snake-cased class name
# ("conv2d", "depthwise_conv2d" + counter), and registration under package="groupnets" keeps .keras configs
# (and safe_mode loading) unambiguous. Every formulation is the same sum of products in another order: the
# float32 difference to the plain conv is ~1e-7 relative, float64 ~1e-16.
#
# |                      | TF (graph, no XLA)  | TF + XLA, JAX (XLA)                 | torch                |
# |----------------------|---------------------|-------------------------------------|----------------------|
# | depthwise k x k      | native tf kernel    | k*k shifted multiply-adds (~40x)    | NCHW view conv (2x)  |
# | 1x1, groups=1        | native              | matmul on JAX (~2x); native on TF   | NCHW view conv       |
# | 1x1, groups>1        | batched matmul      | batched matmul (V1 g3: 1.5x)        | NCHW view conv       |
# | k x k, k*k*C_in/g<=72| per-group convs (8x)| shifted multiply-adds (JAX 2.5x;    | NCHW view conv (3x)  |
# |   (incl. 3x3 stems)  |   (dense: native)   |   TF+XLA ResNeXt-50 1.15x)          | (stems: see code)    |
# | k x k, groups>1      | per-group convs (8x)| per-group convs (2-4x)              | NCHW view conv (3x)  |
#
# Under XLA in float64 a grouped conv is one XLA conv, never per-group ops: XLA CPU compiles every float64
# op to its own loop, so splitting multiplies compile time by the group count (``common.runtime.xla_cpu``).
#
# Shifted multiply-adds (``common.runtime.xla_cpu``): ResNeXt-50 stage 1 at batch 32, 150 → 59 ms per conv; whole
# network (Keras JAX inference, same process) 2255 → 1900 ms, batch 1 63 → 54 ms; ShuffleNet V2's 3x3
# stem as taps instead of im2col: 112 → 90 ms at batch 32. Taps are read through stride² phases
# (``common.runtime.xla_conv.windows``), never strided or bare slices: a bare slice let XLA fuse the producer
# (bias + ReLU + pad) into every one of the k·k·in/g terms and recompute it (ResNeXt stage 1: 56 → 147 ms).
#
# The formulations' arithmetic (phase windows, taps sum, batched grouped 1x1 matmul, per-group split) is
# ``common.runtime.xla_conv``, shared with flax_impl; what stays here is which one runs per Keras backend
# and compiler, the TF-graph fallbacks for dynamic dims, depthwise on Keras's (kh, kw, C, mult) kernel, and
# the torch NCHW view.
#
# "NCHW view conv" (torch backend): ``ops.conv(..., data_format="channels_first")`` on
# ``ops.transpose(x, (0, 3, 1, 2))``, which on torch is a free view with channels-last strides, so
# PyTorch runs its channels-last kernel and ``transpose`` back is a free view too; Keras's own
# channels_last conv copies the input to NCHW and back to channels-last on every call (2-3x slower).
# TensorFlow's grouped conv is refused on CPU without XLA, so Keras compiles each one with XLA on its own
# (slow); XLA's CPU convs with feature_group_count are slow too (depthwise worst).


def _backend() -> str:
    return keras.backend.backend()


def _in_tf_xla(x) -> bool:
    """True while tracing ``x`` inside a TensorFlow function compiled with XLA (``jit_compile=True``).

    keras_impl never imports TensorFlow, so this walks the graph's control-flow contexts the way
    ``tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext`` does (``tf.function`` enters
    an ``XLAControlFlowContext`` around the trace of a jit-compiled function). Anything unexpected
    (eager tensors, other TF versions) counts as "not XLA": only speed depends on it, never results.
    """
    try:
        graph = x.graph
        while graph is not None:
            ctxt = graph._get_control_flow_context()  # noqa: SLF001 (TF private, duck-typed)
            while ctxt is not None:
                if ctxt.IsXLAContext():
                    return True
                ctxt = ctxt.outer_context
            graph = getattr(graph, "outer_graph", None)
    except Exception:  # noqa: BLE001 - eager tensors have no graph; any surprise means "not XLA"
        return False
    return False


def _uses_xla(x) -> bool:
    backend = _backend()
    return backend == "jax" or (backend == "tensorflow" and _in_tf_xla(x))


def _nchw_view_conv(x, kernel, strides):
    """torch backend: conv on a channels-last-strided NCHW view (no layout copies), back to NHWC."""
    y = ops.conv(ops.transpose(x, (0, 3, 1, 2)), kernel, strides=strides, padding="valid",
                 data_format="channels_first")
    return ops.transpose(y, (0, 2, 3, 1))


def _grouped_matmul(x, kernel, groups: int):
    """A grouped 1x1 conv on NHWC ``x`` (``kernel`` ``(in/g, out)``) as one matmul batched over the groups
    (``common.runtime.xla_conv.grouped_matmul``). Spatial dims unknown while tracing (TF graphs): one
    matmul per group, as the batched one needs them to reshape back."""
    _, h, w, c = x.shape
    if h is None or w is None or c is None:
        return xla_conv.per_group(ops, x, kernel, groups, lambda a, b: ops.einsum("...i,io->...o", a, b))
    return xla_conv.grouped_matmul(ops, x, kernel, groups, ops.matmul)


@_REGISTER
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` (same variables, config and class name) with a faster eval forward.

    Only ``convolution_op`` changes (VALID, no dilation, channels_last, as ``leaf_layers`` builds it);
    any other configuration uses Keras's own op. See the table above for which formulation runs where.
    """

    def _fast(self) -> bool:
        return (self.padding == "valid" and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1) and not self.lora_enabled)

    def convolution_op(self, inputs, kernel):
        if not self._fast():
            return super().convolution_op(inputs, kernel)
        backend = _backend()
        strides = tuple(self.strides)
        kh, kw, cin_g, cout = kernel.shape
        g = self.groups
        if backend == "torch":
            if g == 1 and cin_g <= 4 and kh * kw >= 25:  # big-kernel stem on 3 channels: NCHW copy wins
                return super().convolution_op(inputs, kernel)
            return _nchw_view_conv(inputs, kernel, strides)
        # float64 under XLA: one grouped conv, never one op per group (common.runtime.xla_cpu.split_groups)
        one_grouped_conv = g > 1 and not split_groups(self.compute_dtype) and _uses_xla(inputs)
        if (kh, kw) == (1, 1):
            x = xla_conv.subsample(inputs, strides)
            if g == 1:
                if backend == "jax":
                    return ops.einsum("...i,io->...o", x, kernel[0, 0])  # einsum keeps float64 everywhere
                return super().convolution_op(inputs, kernel)
            if one_grouped_conv:
                return super().convolution_op(inputs, kernel)
            return _grouped_matmul(x, kernel[0, 0], g)
        if use_taps(kh, kw, cin_g) and _uses_xla(inputs):
            return xla_conv.taps_sum(ops, inputs, kernel, g, strides)
        if g > 1 and not one_grouped_conv:
            return xla_conv.per_group(ops, inputs, kernel, g,
                                      lambda a, b: ops.conv(a, b, strides=strides, padding="valid"))
        return super().convolution_op(inputs, kernel)


@_REGISTER
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` (same variables ``(kh, kw, C, mult)``, config and class name) with
    a faster eval forward: TF's native kernel without XLA, shifted multiply-adds under XLA, a strided NCHW
    view on torch (see the table above)."""

    def call(self, inputs):
        if not (self.padding == "valid" and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1)):
            return super().call(inputs)
        y = self.depthwise_op(inputs, self.kernel)
        if y is None:
            return super().call(inputs)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y

    def depthwise_op(self, inputs, kernel):
        """The fast depthwise conv of ``inputs`` with ``kernel`` (no bias), or None where Keras's own
        kernel is the fast one (TF graph mode). Takes the kernel like ``Conv2D.convolution_op`` does, so
        a BatchNorm-folded kernel can be used (``keras_impl.inference``)."""
        backend = _backend()
        if backend == "torch":
            kh, kw, c, m = kernel.shape
            return _nchw_view_conv(inputs, ops.reshape(kernel, (kh, kw, 1, c * m)), tuple(self.strides))
        if _uses_xla(inputs):
            return self._shifted(inputs, kernel, tuple(self.strides))
        return None

    @staticmethod
    def _shifted(x, kernel, strides):
        """sum over taps (i, j) of window(i, j) * kernel[i, j]; the multiplier m repeats each channel m
        times in place (output channel c*m + j, as Keras / PyTorch order them). Keras's own kernel layout
        ``(kh, kw, C, m)``, so not ``xla_conv.taps_sum`` (which reads ``(kh, kw, 1, C·m)``); the same
        phase windows (``xla_conv.windows``), which also take TF+XLA's dynamic dims."""
        kh, kw, c, m = kernel.shape
        y = None
        for i, j, window in xla_conv.windows(ops, x, (kh, kw), strides):
            if m == 1:
                term = window * kernel[i, j, :, 0]
            else:
                lead = tuple(ops.shape(window)[:-1])
                term = ops.reshape(window[..., None] * kernel[i, j], (*lead, c * m))
            y = term if y is None else y + term
        return y


# ------------------------------------------------------------------------------ IR leaf op → layers
@_REGISTER
class HostHeNormal(keras.initializers.Initializer):
    """Keras's ``HeNormal`` — truncated normal (±2σ), σ = sqrt(2 / fan_in) / 0.8796, fan_in = prod(shape[:-1])
    — drawn on the host with NumPy, on every backend.

    On the JAX backend Keras's own random initializers compile one XLA program per kernel shape: building
    ShuffleNet V1 g3 took 15 s, 14.5 of them in those compiles (2026-12-01). ``seed=None`` draws from
    NumPy's global generator, which ``keras.utils.set_random_seed`` seeds, so builds stay reproducible.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def __call__(self, shape, dtype=None):
        shape = tuple(int(d) for d in shape)
        dtype = keras.backend.standardize_dtype(dtype or "float32")
        if not _DRAW_INITIAL_VALUES.get():  # placeholder_init(): the values are overwritten next
            return ops.convert_to_tensor(np.zeros(shape, dtype), dtype=dtype)
        seed = self.seed if self.seed is not None else int(np.random.randint(2**31 - 1))
        rng = np.random.default_rng(seed)
        z = rng.standard_normal(shape)
        outside = np.abs(z) > 2.0
        while outside.any():  # redraw until every value lies within two standard deviations
            z[outside] = rng.standard_normal(int(outside.sum()))
            outside = np.abs(z) > 2.0
        fan_in = max(1, math.prod(shape[:-1]))
        values = z * (math.sqrt(2.0 / fan_in) / 0.87962566103423978)
        return ops.convert_to_tensor(values.astype(dtype), dtype=dtype)  # dtype given: no per-shape compile

    def get_config(self) -> dict:
        return {"seed": self.seed}


_DRAW_INITIAL_VALUES: contextvars.ContextVar[bool] = contextvars.ContextVar("draw_initial_values", default=True)


@contextlib.contextmanager
def placeholder_init():
    """Layers built inside get zeros where :class:`HostHeNormal` would draw: for a model whose weights are
    loaded right after (``build(node, dtype, weights=...)``), the draw was thrown away — and it was half
    of building ResNeXt-50 (2026-12-02: TensorFlow 1.8 → 1.1 s, JAX 2.3 → 0.4 s, float32)."""
    token = _DRAW_INITIAL_VALUES.set(False)
    try:
        yield
    finally:
        _DRAW_INITIAL_VALUES.reset(token)


def _conv_initializer() -> keras.initializers.Initializer:
    # He-normal (fan-in): these are ReLU nets; Keras's glorot_uniform default under-scales deep stacks.
    return HostHeNormal()


def leaf_layers(op: object, path: str, dtype: str) -> list[keras.layers.Layer]:
    """The Keras layers (applied in order) that compute one IR leaf op with PyTorch semantics."""
    name = keras_name(path) if path else None
    base = path or type(op).__name__.lower()
    if isinstance(op, ir.Conv2d):
        layers: list[keras.layers.Layer] = []
        if op.padding:
            # Explicit symmetric padding + VALID conv: Keras "same" with stride 2 pads only bottom/right.
            layers.append(keras.layers.ZeroPadding2D(op.padding, name=keras_name(base, "pad"), dtype=dtype))
        wname = weight_layer_name(path, op)
        if op.is_depthwise:
            # Kernel (kh, kw, C, multiplier) per PORTING_TABLE; the fast path per backend is the class's.
            layers.append(DepthwiseConv2D(
                op.kernel_size, strides=op.stride, padding="valid", depth_multiplier=op.depth_multiplier,
                use_bias=op.bias, depthwise_initializer=_conv_initializer(), name=wname, dtype=dtype))
        else:
            layers.append(Conv2D(
                op.out_channels, op.kernel_size, strides=op.stride, padding="valid", groups=op.groups,
                use_bias=op.bias, kernel_initializer=_conv_initializer(), name=wname, dtype=dtype))
        return layers
    if isinstance(op, ir.BatchNorm2d):
        # PyTorch momentum is the weight of the new batch; Keras's is the weight of the old value.
        return [TorchBatchNormalization(momentum=1.0 - op.momentum, epsilon=op.eps,
                                        name=weight_layer_name(path, op), dtype=dtype)]
    if isinstance(op, ir.ReLU):
        return [keras.layers.ReLU(name=name, dtype=dtype)]
    if isinstance(op, ir.MaxPool2d):
        layers = [NegInfPadding2D(op.padding, name=keras_name(base, "pad"), dtype=dtype)] if op.padding else []
        # VALID on the -inf-padded input = PyTorch's max-pool with floor rounding.
        return layers + [keras.layers.MaxPooling2D(op.kernel_size, op.stride, padding="valid", name=name,
                                                   dtype=dtype)]
    if isinstance(op, ir.AvgPool2d):
        # Zero padding + VALID average = PyTorch's count_include_pad=True (padded zeros are averaged in).
        layers = [keras.layers.ZeroPadding2D(op.padding, name=keras_name(base, "pad"), dtype=dtype)] \
            if op.padding else []
        return layers + [keras.layers.AveragePooling2D(op.kernel_size, op.stride, padding="valid", name=name,
                                                       dtype=dtype)]
    if isinstance(op, ir.ChannelShuffle):
        return [ChannelShuffle(op.groups, op.convention, name=name, dtype=dtype)]
    if isinstance(op, ir.Linear):
        return [Linear(op.out_features, use_bias=op.bias, name=weight_layer_name(path, op), dtype=dtype)]
    if isinstance(op, ir.ShuffleAttention):
        return [ShuffleAttention(op.groups, op.eps, name=weight_layer_name(path, op), dtype=dtype)]
    raise TypeError(f"not an IR leaf op: {type(op).__name__}")
