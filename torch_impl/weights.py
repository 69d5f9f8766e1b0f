"""Canonical weights ⇄ a torch model. Torch *is* the canonical layout, so the porting table's torch
rules are the identity; going through ``common.weights.porting`` anyway keeps strictness and error messages
identical across backends."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from common.errors import WeightsMismatchError
from common.spec.params import node_name
from common.weights.porting import LoadReport, to_canonical, to_framework


def _unwrap(model: nn.Module) -> nn.Module:
    """The module itself, also inside a ``torch.compile`` wrapper (whose keys carry ``_orig_mod.``) or a
    ``DistributedDataParallel`` / ``DataParallel`` one (``module.``), however nested."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _to_numpy(value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def export_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Canonical weights (torchvision keys, PyTorch layouts) as independent NumPy copies."""
    model = _unwrap(model)
    # .copy(): .numpy() shares memory with the live parameters, which later training would overwrite.
    raw = {key: _to_numpy(value).copy() for key, value in model.state_dict().items()}
    return to_canonical(model.spec, "torch", raw)


def load_weights(model: nn.Module, weights: Mapping[str, object], strict: bool = True) -> LoadReport:
    """Load canonical weights (NumPy arrays or torch tensors) into ``model``.

    Everything is validated (keys when ``strict``, shapes and dtypes always) before anything is
    assigned, so a failed load leaves the model untouched. Floats are cast to the model's dtype.
    """
    model = _unwrap(model)
    arrays = {key: _to_numpy(value) for key, value in weights.items()}
    framework_weights, report = to_framework(model.spec, "torch", arrays, strict)
    targets = model.state_dict(keep_vars=True)
    stray = [key for key in framework_weights if key not in targets]
    if stray:  # the module tree disagrees with its own spec: a backend bug, never silently skipped
        raise WeightsMismatchError(node_name(model.spec), unexpected=stray, source="the torch module tree")
    with torch.no_grad():
        for key, array in framework_weights.items():
            # np.require: native byte order, writable, C-contiguous, as torch.from_numpy needs (copies
            # only when it must); copy_ then casts to the parameter's dtype and device.
            source = np.require(array, dtype=array.dtype.newbyteorder("="), requirements=("C", "W"))
            targets[key].copy_(torch.from_numpy(source))
    return report
