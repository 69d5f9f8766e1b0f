"""The training bridge: one NumPy-in, NumPy-out train step, comparable across backends
(``docs/backend-contract.md``, "Training bridge")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.runtime.checks import check_input, check_labels, check_step_hyperparameters
from common.weights.porting import running_statistics, to_canonical

from .bridge import _device, model_dtype
from .weights import _unwrap, export_weights


def per_process_forward(network: nn.Module, inputs: torch.Tensor, shards: int,
                        params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The train-mode forward of ``shards`` DistributedDataParallel processes on CPU, in one process.

    Each process normalises with the BatchNorm statistics of its own part of the batch (torch's
    ``SyncBatchNorm`` refuses CPU tensors), so each of ``shards`` equal parts is forwarded on its own, from
    the same BatchNorm buffers, and the logits are concatenated: with equal parts, the mean loss over all
    samples has the gradient DDP's averaging gives. The buffers end as the first part's — rank 0's, which
    DDP broadcasts to every process at its next forward. ``params`` (name → tensor) replace the module's
    own, as ``torch.func.functional_call`` does; ``shards=1`` is the plain forward.
    """
    if shards == 1 and params is None:
        return network(inputs)
    if inputs.shape[0] % shards:
        raise ValueError(f"a batch of {inputs.shape[0]} does not split into {shards} equal per-process parts")
    start = {name: b.detach().clone() for name, b in network.named_buffers()}
    outputs, first = [], None
    for part in inputs.chunk(shards):
        own = {name: b.clone() for name, b in start.items()}  # updated in place by this part's forward
        outputs.append(torch.func.functional_call(network, {**(params or {}), **own}, (part,)))
        first = own if first is None else first
    with torch.no_grad():
        for name, buffer in network.named_buffers():
            buffer.copy_(first[name])
    return torch.cat(outputs)


def train_step_numpy(model: nn.Module, x: np.ndarray, labels: Sequence[int] | np.ndarray, lr: float = 0.0,
                     momentum: float = 0.9, weight_decay: float = 0.0, steps: int = 1, shards: int = 1
                     ) -> dict[str, object]:
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

    ``shards > 1``: the step of that many DistributedDataParallel processes on CPU, each with an equal part
    of the batch (:func:`per_process_forward`: per-process BatchNorm statistics, rank 0's buffers kept) —
    the one-process reference of a DDP step.

    Returns ``{"logits": (N, classes), "loss": float, "grads": canonical-key dict (trainable parameters
    only), "input_grad": NCHW}``, all NumPy.
    """
    check_step_hyperparameters(lr, momentum, weight_decay, steps)  # before the forward touches any BN buffer
    if not (isinstance(shards, int) and shards >= 1):
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
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
            logits = model(inputs) if shards == 1 else per_process_forward(network, inputs, shards)
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
                        again = inputs.detach()
                        step_logits = model(again) if shards == 1 else per_process_forward(network, again, shards)
                        step_grads = torch.autograd.grad(F.cross_entropy(step_logits, target),
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
