"""NumPy in, NumPy out: the eval-mode forward ``common.check.verify`` and the CLI call.

A network runs piece by piece — each stem layer, block, head layer and the classifier through one cached
``nnx.jit`` — rather than as one program: the blocks a stage repeats are the same pytree structure, so they
share one compiled executable. First-call time at 64 × 49, float32: ResNeXt-101 32x8d 23.9 → 7.5 s,
ShuffleNet V2 x1.0 2.9 → 2.1 s (same logits to the printed digit; 2026-12-04). The recommended fast path,
one program with constant weights, is :func:`flax_impl.optimize_for_inference`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.runtime.checks import check_input

from .blocks import iter_modules
from .model import Network


def _forward(model: nnx.Module, x: jax.Array, taps: bool) -> Any:
    return model(x, taps=True) if taps else model(x)


#: Tree-mode ``nnx.jit``: the model is flattened as a plain pytree (a few ms even for ResNeXt-101, where a
#: graph-mode split costs ~0.1-0.5 s per call). Its static attributes (spec, eval/train flags) are in the
#: tree structure, so each (architecture, mode, input shape/dtype, taps) compiles once and is then cached.
_jitted_forward = nnx.jit(_forward, static_argnames="taps", graph=False)


def _jitted_call(module: nnx.Module, x: jax.Array) -> jax.Array:
    return _jitted_forward(module, x, taps=False)


def _modes(model: nnx.Module) -> list[tuple[nnx.Module, Any]]:
    """Every sub-module with a train/eval flag and its current value (so a mixed mode is restored too)."""
    return [(module, module.use_running_average) for module in iter_modules(model)
            if hasattr(module, "use_running_average")]


def model_dtype(model: nnx.Module) -> np.dtype:
    """The compute dtype the model was built with."""
    return np.dtype(model.dtype)


def forward_numpy(model: nnx.Module, x: np.ndarray, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward of an NHWC NumPy array (cast to the model's dtype); NumPy results.

    A network gives ``{"logits": ...}`` or, with ``taps=True``, every name of ``spec.stage_names``; any
    other module gives ``{"output": ...}``. The model's train/eval flags are restored afterwards, and the
    running statistics are never touched (eval mode).
    """
    is_network = isinstance(model, Network)
    if taps and not is_network:
        raise ValueError(f"taps=True needs a network; got a {type(model).__name__} module")
    x = jnp.asarray(check_input(x, getattr(model, "spec", None), channels_last=True, backend="flax_impl"),
                    model_dtype(model))
    saved = _modes(model)
    try:
        for module, _ in saved:  # = model.eval(), without a second traversal
            module.use_running_average = True
        if is_network:  # piece by piece: a stage's repeated blocks compile once (module docstring)
            out = model(x, taps=bool(taps), apply=_jitted_call)
        else:
            out = _jitted_forward(model, x, taps=False)
    finally:
        for module, flag in saved:
            module.use_running_average = flag
    if is_network:  # jit returns dicts key-sorted; give the taps back in spec.stage_names order
        out = {name: out[name] for name in model.spec.stage_names} if taps else {"logits": out}
    else:
        out = {"output": out}
    return {key: np.asarray(value) for key, value in out.items()}
