"""The recommended eval path per Keras backend: one compiled ``x -> logits`` function.

* JAX: ``jax.jit`` of the model's graph, with the weights of creation time bound as its arguments. Against
  ``predict_on_batch`` (measured with the weights as constants, in one process, interleaved): ShuffleNet
  V2 x1.0 at batch 1 5.8 → 4.5 ms, ResNeXt-50 69 → 64 ms. Every eval BatchNorm that directly follows a
  conv is folded into it (``common.spec.fusion``, in float64, at creation): the walk calls the conv with
  the folded kernel plus a bias and skips the BatchNorm layer, as ONNX Runtime does at load time.
* TensorFlow: the same walk in ``tf.function(jit_compile=True)`` (XLA), the weights copied into variables
  of the function's own; one trace per input shape.
* torch: the model's forward under ``torch.inference_mode()`` (no graph compiler is used).

The weights are arguments, not compile-time constants: as constants (measured 2026-12-07, batch 32 at
224, a process each) they ran no faster and cost memory and compile time — Keras on JAX, ResNeXt-50
1076 ms, peak 1404 MB, first call 7.6 s as constants against 1077 ms, 1024 MB, 4.5 s as arguments (V2
and V1 g3 even in time; batch 1 within 0.1-0.2 ms); on TensorFlow, ResNeXt-50 peak 3.7 against 2.1 GB
and SA-ResNet-50 3.4 against 1.7 GB at the same speed.

On JAX, ``layout="channel_major"`` jits :mod:`common.runtime.channel_major`'s graph instead (activations
``(C, H, W, N)``, spelled in ``keras.ops``, the canonical weights folded at trace time) — the same graph
as ``flax_impl``'s: faster at batch 32 for ShuffleNet V1 g8 and SA-ResNet-50, slower elsewhere
(``docs/performance.md``).

This module imports the *active Keras backend's* own library (lazily, per backend); like the rest of
``keras_impl`` it never imports another framework's implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from common.runtime import channel_major
from common.spec.fusion import conv_bn_pairs, fold_batch_norm
from common.runtime.inference import InferenceFunction as BaseInferenceFunction
from common.runtime.micro_batch import MAX_BUFFER_BYTES

from .layers import Conv2D, DepthwiseConv2D, exact_mean
from .model import get_layer
from .weights import export_weights

#: What the channel-major graph computes with: Keras's own ops.
KERNELS = channel_major.Kernels(xp=keras.ops, const=keras.ops.convert_to_tensor, matmul=keras.ops.matmul,
                                sigmoid=keras.ops.sigmoid, mean=exact_mean)


class InferenceFunction(BaseInferenceFunction):
    """``logits = fast(x_nhwc)`` in eval mode. On JAX and TensorFlow the weights are those of creation time;
    on torch the function reads the model's variables. Either way, make a new one after changing weights."""

    backend = "keras_impl"
    layouts = ("channels_last", "channel_major")

    def __init__(self, model: keras.Model, layout: str | None = None,
                 max_buffer_bytes: int | None = MAX_BUFFER_BYTES) -> None:
        self.keras_backend = keras.backend.backend()
        super().__init__(model, getattr(model, "groupnets_dtype", None), layout, max_buffer_bytes)

    def _compiled(self, model: keras.Model) -> Callable[[Any], Any]:
        if self.layout == "channel_major":
            if self.keras_backend != "jax":
                raise ValueError(f"keras_impl.optimize_for_inference: layout='channel_major' is an XLA graph for "
                                 f"the JAX backend; this Keras runs on {self.keras_backend!r}")
            import jax  # noqa: PLC0415 - Keras's own backend library

            return jax.jit(self._channel_major_forward(export_weights(model), KERNELS))
        return _compile(model, self.keras_backend)

    def _to_numpy(self, value: Any) -> np.ndarray:
        return keras.ops.convert_to_numpy(value)

    def _buffer_bytes(self, x: Any) -> int | None:
        # XLA on JAX says what a call needs; TensorFlow's allocator keeps its memory (no faults to save)
        return self._xla_buffer_bytes(x) if self.keras_backend == "jax" else None

    def _concatenate(self, parts: list[Any]) -> Any:
        return keras.ops.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return (f"InferenceFunction({self.spec.name}, dtype={self.dtype}, backend={self.keras_backend}, "
                f"layout={self.layout}, max_buffer_bytes={self.max_buffer_bytes})")


def _compile(model: keras.Model, backend: str) -> Callable[[Any], Any]:
    if backend == "jax":
        import jax  # noqa: PLC0415 - Keras's own backend library

        forward, weights = _frozen_forward(model, jax.numpy.asarray)
        return _BoundWeights(jax.jit(forward), weights)
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        # One trace per input shape, as XLA compiles one per shape anyway: with static H, W it ran ShuffleNet
        # V1 g3 batch 32 at 224 in 120 ms against 136-137 from one dynamic-shape trace, first call 1.9 s
        # against 3.1 (2026-12-07, in-process).
        forward, weights = _frozen_forward(model, lambda array: tf.Variable(array, trainable=False))
        return tf.function(functools.partial(forward, weights), jit_compile=True, reduce_retracing=False)
    if backend == "torch":
        import torch  # noqa: PLC0415

        def forward(x: Any) -> Any:
            with torch.inference_mode():
                return model(keras.ops.convert_to_tensor(x), training=False)
        return forward
    raise ValueError(f"keras_impl.optimize_for_inference: unsupported Keras backend {backend!r}")


#: ``(the kept weights in variable order, {id(conv layer): (folded kernel, bias)})``, as a compiler's argument.
Weights = tuple[list[Any], dict[int, tuple[Any, Any]]]


def _frozen_forward(model: keras.Model, hold: Callable[[Any], Any]) -> tuple[Callable[[Weights, Any], Any], Weights]:
    """``(forward(weights, x), weights)``: the model's eval forward with every conv → BN pair folded
    (:func:`folded_batch_norms`), for a compiler to trace, and the weights of now it reads, each kept by
    ``hold(array)`` — the folded ones and the model's others, never the kernels and statistics folding
    replaced. The weights are the compiled function's *arguments*, not constants: as constants they ran
    no faster and cost memory and compile time (module docstring)."""
    folded, skipped = folded_batch_norms(model)
    replaced = {id(v) for layer in model.layers if id(layer) in folded or id(layer) in skipped
                for v in layer.variables}
    kept = [v for v in model.variables if id(v) not in replaced]
    weights = ([hold(v.value) for v in kept], {key: (hold(k), hold(b)) for key, (k, b) in folded.items()})
    dtype = model.groupnets_dtype

    def forward(weights: Weights, x: Any) -> Any:
        values, convs = weights

        def operation_fn(op: Any) -> Callable[..., Any]:
            if id(op) in convs:
                return _folded_conv(op, *convs[id(op)])
            if id(op) in skipped:
                return lambda x, **kwargs: x
            if isinstance(op, keras.layers.Layer):
                return lambda *args, **kwargs: op(*args, training=False, **kwargs)
            return op

        with keras.StatelessScope(state_mapping=list(zip(kept, values))):
            return model._run_through_graph(keras.ops.cast(x, dtype), operation_fn=operation_fn)  # noqa: SLF001
    return forward, weights


class _BoundWeights:
    """A jitted ``f(weights, x)`` with its weights bound: called and lowered like a jitted ``f(x)``."""

    def __init__(self, jitted: Any, weights: Weights) -> None:
        self.jitted, self.weights = jitted, weights

    def __call__(self, x: Any) -> Any:
        return self.jitted(self.weights, x)

    def lower(self, x: Any) -> Any:
        return self.jitted.lower(self.weights, x)


def folded_batch_norms(model: keras.Model) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], set[int]]:
    """``({id(conv layer): (folded kernel, bias) as host arrays}, {id(BatchNorm layer) to skip})`` for every
    BatchNorm that reads only a conv's output (the spec's conv → BN pairs, checked against the layer graph)."""
    folded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    skipped: set[int] = set()
    readers = model._consumer_counts()  # noqa: SLF001 - GroupNet's own: {id(symbolic tensor): readers}
    for conv_path, bn_path in conv_bn_pairs(model.spec):
        conv, bn = get_layer(model, conv_path), get_layer(model, bn_path)
        if (not isinstance(conv, (Conv2D, DepthwiseConv2D)) or bn.input is not conv.output
                or readers.get(id(conv.output)) != 1):
            continue
        numpy = keras.ops.convert_to_numpy
        kernel = numpy(conv.kernel)
        channels = bn.moving_mean.shape[0]
        gamma = numpy(bn.gamma) if bn.scale else np.ones(channels)
        beta = numpy(bn.beta) if bn.center else np.zeros(channels)
        bias = numpy(conv.bias) if conv.use_bias else None
        # HWIO (Conv2D) and (kh, kw, C, mult) (depthwise, output channel c*mult + m) both flatten to
        # (kh, kw, ?, out) with the output channel last.
        flat = kernel.reshape(*kernel.shape[:2], -1, channels)
        weight, shift = fold_batch_norm(flat, bias, gamma, beta, numpy(bn.moving_mean),
                                        numpy(bn.moving_variance), bn.epsilon, out_axis=-1)
        folded[id(conv)] = (weight.reshape(kernel.shape), shift)
        skipped.add(id(bn))
    return folded, skipped


def _folded_conv(layer: keras.layers.Layer, kernel: Any, bias: Any) -> Callable[..., Any]:
    """``layer``'s own fast conv with a BatchNorm-folded ``kernel``, plus the folded ``bias``."""
    def run(x: Any, **kwargs: Any) -> Any:
        # under XLA ``depthwise_op`` always has a fast op (None is TensorFlow graph mode's answer)
        y = layer.convolution_op(x, kernel) if isinstance(layer, Conv2D) else layer.depthwise_op(x, kernel)
        return y + bias
    return run


def optimize_for_inference(model: keras.Model, layout: str = "channels_last",
                           max_buffer_bytes: int | None = MAX_BUFFER_BYTES) -> InferenceFunction:
    """The recommended compiled eval forward of a groupnets Keras network (see the module docstring);
    the model itself is not modified. ``layout="channel_major"``: JAX only (module docstring).

    On JAX a batch whose call needs more than ``max_buffer_bytes`` of working memory runs as micro-batches
    (:mod:`common.runtime.micro_batch`); ``None`` runs every batch whole."""
    return InferenceFunction(model, layout, max_buffer_bytes)


__all__ = ["InferenceFunction", "optimize_for_inference"]
