"""The recommended eval path per Keras backend: one compiled ``x -> logits`` function.

* JAX: ``jax.jit`` of ``stateless_call`` with the weights captured at creation as compile-time constants
  (as an ONNX Runtime session holds its initializers). ``predict_on_batch`` passes every variable as an
  argument on every call; measured in one process, interleaved: ShuffleNet V2 x1.0 at batch 1
  5.8 → 4.5 ms, ResNeXt-50 69 → 64 ms.
* TensorFlow: ``tf.function(jit_compile=True)`` (XLA) reading the model's variables.
* torch: the model's forward under ``torch.inference_mode()`` (no graph compiler is used).

This module imports the *active Keras backend's* own library (lazily, per backend); like the rest of
``keras_impl`` it never imports another framework's implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from common.ir import NetworkSpec


class InferenceFunction:
    """``logits = fast(x_nhwc)`` in eval mode. On JAX the weights are those of creation time; on TensorFlow
    and torch the function reads the model's variables. Either way, make a new one after changing weights."""

    def __init__(self, model: keras.Model) -> None:
        spec = getattr(model, "spec", None)
        if not isinstance(spec, NetworkSpec):
            raise TypeError(f"optimize_for_inference needs a whole groupnets network, got {type(model).__name__}")
        self.spec = spec
        self.dtype = keras.backend.standardize_dtype(model.groupnets_dtype)
        self.backend = keras.backend.backend()
        self._forward = _compile(model, self.backend)

    def __call__(self, x: Any) -> Any:
        return self._forward(x)

    def forward_numpy(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``{"logits": ...}`` for an NHWC NumPy array (cast to the model's dtype)."""
        return {"logits": keras.ops.convert_to_numpy(self(np.asarray(x, self.dtype)))}

    def __repr__(self) -> str:
        return f"InferenceFunction({self.spec.name}, dtype={self.dtype}, backend={self.backend})"


def _compile(model: keras.Model, backend: str) -> Callable[[Any], Any]:
    if backend == "jax":
        import jax  # noqa: PLC0415 - Keras's own backend library

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return jax.jit(lambda x: model.stateless_call(trainable, non_trainable, x, training=False)[0])
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        # One trace for any batch / size (channels fixed, as the layers need them static); XLA still
        # compiles once per concrete shape.
        signature = [tf.TensorSpec((None, None, None, model.spec.in_channels), model.groupnets_dtype)]
        return tf.function(lambda x: model(x, training=False), jit_compile=True, input_signature=signature)
    if backend == "torch":
        import torch  # noqa: PLC0415

        def forward(x: Any) -> Any:
            with torch.inference_mode():
                return model(keras.ops.convert_to_tensor(x), training=False)
        return forward
    raise ValueError(f"keras_impl.optimize_for_inference: unsupported Keras backend {backend!r}")


def optimize_for_inference(model: keras.Model) -> InferenceFunction:
    """The recommended compiled eval forward of a groupnets Keras network (see the module docstring);
    the model itself is not modified."""
    return InferenceFunction(model)


__all__ = ["InferenceFunction", "optimize_for_inference"]
