"""The training bridge: one NumPy-in, NumPy-out train step, comparable across backends
(``docs/backend-contract.md``, "Training bridge")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.runtime.checks import check_input, check_labels, check_step_hyperparameters
from common.weights.porting import running_statistics, to_canonical

from .bridge import _device, model_dtype
from .weights import _unwrap, export_weights


def train_step_numpy(model: nn.Module, x: np.ndarray, labels: Sequence[int] | np.ndarray, lr: float = 0.0,
                     momentum: float = 0.9, weight_decay: float = 0.0, steps: int = 1) -> dict[str, object]:
    """One train-mode step on NumPy data (NCHW ``x``, integer ``labels``).

    Forward in train mode (BatchNorm: batch statistics, running statistics updated by PyTorch's rule —
    except backbone BatchNorm frozen by :func:`torch_impl.freeze_backbone`, which stays in eval mode), mean
    softmax cross-entropy, gradients w.r.t. every parameter with ``requires_grad`` and w.r.t. the input,
    then, if ``lr > 0``, one ``torch.optim.SGD(lr, momentum, weight_decay)`` step over those parameters
    (a fresh optimiser: zero momentum buffer; PyTorch's coupled L2 decay) — or ``steps`` steps on this
    batch with that one optimiser (each a train-mode forward and backward; the momentum buffer carries the
    decay from step to step, so coupled and decoupled decay differ from the second step on). Logits, loss
    and gradients returned are the first step's. Parameters' ``.grad`` are left
    as they were; the module train/eval flags are restored; if the forward raises (e.g. one value per
    channel in train mode: ``ValueError``), the BatchNorm buffers it had already updated are restored too.

    Returns ``{"logits": (N, classes), "loss": float, "grads": canonical-key dict (trainable parameters
    only), "input_grad": NCHW}``, all NumPy.
    """
    check_step_hyperparameters(lr, momentum, weight_decay, steps)  # before the forward touches any BN buffer
    network = _unwrap(model)
    spec = network.spec
    array = check_input(x, spec, channels_last=False, backend="torch_impl")
    # torch.tensor copies: in-place ops can never write into the caller's array.
    inputs = torch.tensor(array, dtype=model_dtype(model), device=_device(model)).requires_grad_()
    trainable = [(name, p) for name, p in network.named_parameters() if p.requires_grad]

    modes = [(module, module.training) for module in model.modules()]
    buffers = {name: b.detach().clone() for name, b in network.named_buffers()}
    model.train()  # Network.train keeps a frozen backbone's BatchNorm in eval mode
    try:
        with torch.enable_grad():
            logits = model(inputs)
            if logits.ndim != 2:
                raise ValueError(f"train_step_numpy needs (N, classes) logits, got shape {tuple(logits.shape)}")
            target = torch.as_tensor(check_labels(labels, int(logits.shape[0]), int(logits.shape[1]))).to(logits.device)
            loss = F.cross_entropy(logits, target)  # mean over the batch
            grads = torch.autograd.grad(loss, [p for _, p in trainable] + [inputs])
    except BaseException:
        with torch.no_grad():  # a failed step changes nothing: undo BatchNorm updates made before the error
            for name, buffer in network.named_buffers():
                buffer.copy_(buffers[name])
        raise
    finally:
        for module, training in modes:
            module.training = training

    param_grads, input_grad = grads[:-1], grads[-1]
    first_buffers = running_statistics(export_weights(model))
    if lr > 0 and trainable:
        saved = [p.grad for _, p in trainable]
        optimizer = torch.optim.SGD([p for _, p in trainable], lr=lr, momentum=momentum, weight_decay=weight_decay)
        try:
            step_grads = param_grads
            for step in range(steps):
                if step:  # the next step's gradients, at the stepped weights (inputs and labels as before)
                    model.train()
                    with torch.enable_grad():
                        step_grads = torch.autograd.grad(F.cross_entropy(model(inputs.detach()), target),
                                                         [p for _, p in trainable])
                for (_, p), g in zip(trainable, step_grads):
                    p.grad = g.detach().clone()
                optimizer.step()
        finally:
            for module, training in modes:
                module.training = training
            for (_, p), g in zip(trainable, saved):
                p.grad = g

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().copy()

    canonical = to_canonical(spec, "torch", {name: numpy(g) for (name, _), g in zip(trainable, param_grads)},
                             partial=True)
    return {"logits": numpy(logits), "loss": float(loss.detach()), "grads": canonical, "input_grad": numpy(input_grad),
            "buffers": first_buffers}
