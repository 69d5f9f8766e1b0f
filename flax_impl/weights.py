"""Canonical weights ⇄ a Flax NNX model, through ``common.weights.porting`` (names and layouts decided there).

The raw (Flax-named) view of a model is ``{".".join(state path): array}`` over ``nnx.state(model)``;
thanks to the naming in :mod:`flax_impl.blocks` those keys are exactly
``common.weights.porting.framework_shapes(model.spec, "flax")``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from common.errors import WeightsMismatchError
from common.spec.params import canonical_params, node_name
from common.weights.porting import LoadReport, to_canonical, to_framework

from .layers import from_host


def model_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """``"{layer}.{param}"`` → the live ``nnx.Variable`` (``nnx.state`` holds references, not copies)."""
    return {".".join(str(part) for part in path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def raw_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's own arrays under Flax names and layouts (``kernel`` HWIO, ``scale``, ``mean`` ...)."""
    return {key: np.asarray(var.get_value()) for key, var in model_variables(model).items()}


def export_weights(model: nnx.Module) -> dict[str, np.ndarray]:
    """Canonical weights (torchvision keys, PyTorch layouts, ``num_batches_tracked`` int64), in
    ``state_dict`` order. Raises ``WeightsMismatchError`` if the model's state does not cover its spec
    exactly (a backend bug)."""
    canonical = to_canonical(model.spec, "flax", raw_weights(model))
    params = canonical_params(model.spec)
    # counters are int32 when jax_enable_x64 is off; canonical (torch) counters are int64
    return {key: value.astype(np.int64) if params[key].is_integer else value for key, value in canonical.items()}


def load_weights(model: nnx.Module, weights: Mapping[str, np.ndarray], strict: bool = True) -> LoadReport:
    """Assign canonical ``weights`` to ``model``; floats are cast to the model's dtype.

    Everything is validated first (keys, shapes and dtypes by ``common.weights.porting.to_framework``; then that
    counters fit the model's integer type), and only then assigned, so a failed load changes nothing.
    Returns the :class:`~common.weights.porting.LoadReport` (missing / unexpected keys of a non-strict load).
    """
    framework, report = to_framework(model.spec, "flax", weights, strict=strict)
    variables = model_variables(model)
    staged: list[tuple[nnx.Variable, np.ndarray]] = []
    wrong_dtype: list[tuple[str, str, str]] = []
    for key, array in framework.items():
        var = variables.get(key)
        if var is None:  # the spec names a tensor the module tree lacks: a flax_impl bug, not bad input
            raise RuntimeError(f"flax_impl model {node_name(model.spec)!r} has no variable {key!r}")
        current = var.get_value()
        array = np.asarray(array)
        if array.shape != current.shape:
            raise RuntimeError(f"flax_impl variable {key!r} has shape {current.shape}, porting gave {array.shape}")
        target = np.dtype(current.dtype)
        if target.kind in "iu":
            info = np.iinfo(target)
            if array.size and (array.min() < info.min or array.max() > info.max):
                wrong_dtype.append((key, f"a value that fits {target} (enable jax_enable_x64 for int64)",
                                    f"{array.dtype} value {array.max()}"))
        staged.append((var, array.astype(target)))
    if wrong_dtype:
        raise WeightsMismatchError(node_name(model.spec), wrong_dtype=wrong_dtype)
    for var, array in staged:
        var.set_value(from_host(array))
    return report
