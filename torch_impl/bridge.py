"""NumPy in, NumPy out: the one entry point ``common.check.verify``, the CLI and the tests drive a model by."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.runtime.checks import check_input
from common.spec.ir import NetworkSpec

from .weights import _unwrap


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model computes in: its first floating tensor's (so ``.double()`` is honoured), else
    the dtype it was built with (parameter-free modules such as pools or a channel shuffle)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return getattr(model, "_groupnets_dtype", torch.get_default_dtype())


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def forward_numpy(model: nn.Module, x: np.ndarray, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward of an NCHW NumPy array (cast to the model's dtype).

    A network gives ``{"logits"}`` or, with ``taps``, every ``spec.stage_names`` tap; any other module
    ``{"output"}``. Each submodule's train/eval flag is restored afterwards, even on error.
    """
    spec = getattr(_unwrap(model), "spec", None)
    array = check_input(x, spec, channels_last=False, backend="torch_impl")
    # torch.tensor always copies, so an in-place ReLU can never write into the caller's array.
    inputs = torch.tensor(array, dtype=model_dtype(model), device=_device(model))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            if isinstance(spec, NetworkSpec):
                out = _unwrap(model).forward_taps(inputs) if taps else {"logits": model(inputs)}
            else:
                out = {"output": model(inputs)}
    finally:
        for module, training in modes:
            module.training = training
    return {name: value.detach().cpu().numpy() for name, value in out.items()}
