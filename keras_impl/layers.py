"""Registered Keras layers with PyTorch numerics, the two tensor functions, and IR leaf op → layers.

Imports only ``keras`` (+ NumPy, ``common``), so it runs on the TensorFlow, JAX and torch Keras backends.
Every layer here is channels-last (NHWC) and registered under ``package="groupnets"`` so a ``.keras``
file loads with ``safe_mode=True`` (no ``Lambda``, no pickled code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from common import ir
from common.shuffle import CONVENTIONS

_REGISTER = keras.saving.register_keras_serializable(package="groupnets")

PYTORCH_BN_ERROR = "Expected more than 1 value per channel when training"

#: Layer name of a weighted leaf op built on its own (its canonical layer path is empty).
BARE_LAYER_NAMES = {ir.Conv2d: "conv2d", ir.BatchNorm2d: "batchnorm2d", ir.Linear: "linear"}


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
    """Channel shuffle of an NHWC (any rank, channels last) tensor; see :mod:`common.shuffle`.

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
    view = (groups, -1) if convention == "paper" else (-1, groups)
    y = ops.reshape(x, (*lead, *view))
    y = ops.swapaxes(y, -1, -2)
    return ops.reshape(y, (*lead, -1))


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
        dims = ops.shape(inputs)
        count = ops.cast(dims[1] * dims[2], inputs.dtype)
        return ops.sum(inputs, axis=(1, 2), keepdims=self.keepdims) / count


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
            if all(d is not None for d in static) and math.prod(static) <= 1:
                raise ValueError(f"{PYTORCH_BN_ERROR}, got input shape {tuple(x.shape)}")
            dims = ops.shape(x)
            count = 1
            for i in axes:
                count = count * dims[i]
            count = ops.cast(count, x.dtype)
            # sum / count, not ops.mean: Keras's mean computes float64 in float32 on JAX and torch.
            mean = ops.sum(x, axis=axes) / count
            var = ops.sum(ops.square(x - self._broadcast(mean, ndim)), axis=axes) / count  # biased (PyTorch)
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
        # epsilon straight into x's dtype: ops.cast(1e-5, "float64") would round it through float32 first.
        scale = ops.rsqrt(var + ops.convert_to_tensor(self.epsilon, dtype=x.dtype))
        if self.scale:
            scale = scale * ops.cast(self.gamma, x.dtype)
        y = (x - self._broadcast(mean, ndim)) * self._broadcast(scale, ndim)
        if self.center:
            y = y + self._broadcast(ops.cast(self.beta, x.dtype), ndim)
        return ops.cast(y, self.compute_dtype)


# ------------------------------------------------------------------------------ IR leaf op → layers
def _conv_initializer() -> keras.initializers.Initializer:
    # He-normal (fan-in): these are ReLU nets; Keras's glorot_uniform default under-scales deep stacks.
    return keras.initializers.HeNormal()


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
            # Native depthwise kernel (fast on TF CPU); kernel (kh, kw, C, multiplier) per PORTING_TABLE.
            layers.append(keras.layers.DepthwiseConv2D(
                op.kernel_size, strides=op.stride, padding="valid", depth_multiplier=op.depth_multiplier,
                use_bias=op.bias, depthwise_initializer=_conv_initializer(), name=wname, dtype=dtype))
        else:
            layers.append(keras.layers.Conv2D(
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
    raise TypeError(f"not an IR leaf op: {type(op).__name__}")


def apply_layers(layers: Sequence[keras.layers.Layer], x):
    for layer in layers:
        x = layer(x)
    return x
