"""The fast eval path: the network jit-compiled once with its weights as compile-time constants, the way an
ONNX Runtime session holds its initializers.

``nnx.jit(model)(x)`` passes every array as an argument on every call (flattening ~300-1000 leaves) and XLA
cannot fold anything that depends on them. Closing over an eval-mode *snapshot* of the weights removes both
(measured, same process, interleaved: ShuffleNet V2 x1.0 at batch 1 4.5 → 4.0 ms, V1 g3 6.8 → 5.9 ms,
ResNeXt-50 59 → 55 ms). The model is not modified; the compiled function keeps the weights it saw.

With constant weights, folding eval BatchNorm into a matmul / per-group kernel costs nothing per call
(XLA folds ``kernel · scale`` at compile time), so the snapshot folds on every conv path, not only the taps
path that :func:`flax_impl.layers.conv_bn` folds under a plain ``jit`` (in-process A/B, best of 6 medians:
ShuffleNet V1 g3 at batch 32 219 → 196 ms, at batch 1 5.90 → 5.71 ms; V2 and ResNeXt-50 unchanged).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.runtime.inference import InferenceFunction as BaseInferenceFunction

from .blocks import iter_modules
from .bridge import model_dtype
from .layers import Conv2d


class InferenceFunction(BaseInferenceFunction):
    """``logits = fast(x_nhwc)``: eval mode, weights frozen at creation, one compile per input shape."""

    backend = "flax_impl"

    def __init__(self, model: nnx.Module) -> None:
        super().__init__(model, model_dtype(model) if isinstance(model, nnx.Module) else None)

    def _compiled(self, model: nnx.Module) -> Any:
        graphdef, state = nnx.split(model)
        twin = nnx.merge(graphdef, state)  # new module objects over the same (immutable) arrays
        twin.eval()  # the caller's model keeps its own train/eval flags
        for module in iter_modules(twin):  # weights are jit constants: folding BN into any kernel is free
            if isinstance(module, Conv2d):
                module.fold_bn = "all"
        graphdef, state = nnx.split(twin)
        return jax.jit(lambda x: nnx.merge(graphdef, state)(x))

    def __call__(self, x: Any) -> jax.Array:
        return self._forward(jnp.asarray(x, self.dtype))


def optimize_for_inference(model: nnx.Module) -> InferenceFunction:
    """A jitted eval-mode forward of ``model`` with its current weights baked in as constants.

    Later changes to ``model`` (training, ``load_weights``) do not reach the returned function: make a new
    one. The compiled executable holds its own copy of the weights (memory: about one more set of weights).
    """
    return InferenceFunction(model)


__all__ = ["InferenceFunction", "optimize_for_inference"]
