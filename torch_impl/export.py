"""ONNX export with the TorchScript exporter (``dynamo=False``: no onnxscript dependency), opset 17."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from common.spec.ir import NetworkSpec
from common.weights.files import atomic_output

from .bridge import _device, model_dtype
from .weights import _unwrap

OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int] = (224, 224),
                dynamic_batch: bool = True, overwrite: bool = True) -> Path:
    """Export a network (eval mode) to ONNX: input ``"input"`` (N, C, H, W), output ``"logits"``.

    ``dynamic_batch`` makes N symbolic (else the file takes batch 1 only); H, W stay as traced.
    Written atomically (temporary file beside ``path``, renamed on success). The model's train/eval
    flags are restored afterwards. Returns ``path``.
    """
    network = _unwrap(model)  # export the plain module, also for a torch.compile wrapper
    spec = network.spec
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"export_onnx needs a whole network, got {type(network).__name__}")
    height, width = (int(v) for v in input_size)
    # Traced with batch 2 when the batch is dynamic, so no size-1 dimension can be specialised away.
    dummy = torch.zeros(2 if dynamic_batch else 1, spec.in_channels, height, width,
                        dtype=model_dtype(network), device=_device(network))
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        with atomic_output(path, overwrite) as tmp, torch.no_grad(), warnings.catch_warnings():
            # channel_shuffle / channel_split read int(x.shape[1]): the channel count, fixed by the IR for
            # every input, so "converting a tensor to a Python integer" bakes in nothing that can vary
            # (N is only ever carried through unflatten/flatten/chunk on dim 1).
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(network, (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["logits"], dynamic_axes=dynamic_axes,
                              training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    finally:
        for module, training in modes:
            module.training = training
    return Path(path)
