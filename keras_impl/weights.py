"""Canonical weights ⇄ Keras variables, through :mod:`common.weights.porting` (names and layouts live there).

The Keras key of a tensor is ``"{canonical layer path}.{variable name}"`` (just the variable name for a
bare primitive). Layer *names* may differ from the canonical path on the torch backend (no dots
allowed there), so keys are always derived from the spec, never from ``layer.name``.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from common.spec import ir
from common.spec.params import leaf_params
from common.weights.porting import LoadReport, to_canonical, to_framework

from .layers import weight_layer_name


def keras_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """Every weight of ``model`` by its Keras framework key (``common.weights.porting.framework_shapes`` keys)."""
    by_name = {layer.name: layer for layer in model.layers}
    out: dict[str, keras.Variable] = {}
    for path, op in ir.iter_leaves(model.spec):
        if not leaf_params(path, op):
            continue
        layer = by_name[weight_layer_name(path, op)]
        for variable in layer.weights:
            out[f"{path}.{variable.name}" if path else variable.name] = variable
    return out


def raw_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """The backend's own arrays (Keras names and layouts), as NumPy."""
    out = {}
    for key, variable in keras_variables(model).items():
        value = keras.ops.convert_to_numpy(variable.value)
        if np.issubdtype(value.dtype, np.integer):
            value = value.astype(np.int64)  # canonical num_batches_tracked is int64 (int32 on JAX w/o x64)
        out[key] = value
    return out


def export_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Canonical weights (torchvision keys, PyTorch layouts) of ``model``."""
    return to_canonical(model.spec, "keras", raw_weights(model))


def load_weights(model: keras.Model, weights: Mapping[str, np.ndarray], strict: bool = True) -> LoadReport:
    """Assign canonical ``weights``; validates and converts everything first, so a bad set loads nothing.

    Floats are cast to each variable's dtype (the model's dtype); ``num_batches_tracked`` to its int type.
    Non-strict loads skip missing keys (the variables keep their values) and ignore unexpected ones.
    """
    framework, report = to_framework(model.spec, "keras", weights, strict)
    variables = keras_variables(model)
    plan = []
    for key, value in framework.items():
        variable = variables[key]  # to_framework only yields keys of the spec, and the model has them all
        target = keras.backend.standardize_dtype(variable.dtype)
        array = np.asarray(value).astype(target)
        if array.shape != tuple(variable.shape):
            raise ValueError(f"{key}: shape {array.shape} does not fit variable shape {tuple(variable.shape)}")
        plan.append((variable, array))
    for variable, array in plan:
        variable.assign(array)
    return report
