"""How far a float32 gradient may honestly sit from the float64 one: the ReLU and max-pool kinks.

A ReLU's derivative jumps at 0 and a max-pool's where two values of a window tie. Where the float64
pre-activation of an element lies within float32 rounding of such a point, a float32 run — of any framework
— may route that element's gradient the other way. That adds or removes the element's upstream gradient
there, and so changes the gradient of every parameter *before* it (and of the input) by that amount pushed
back through the network. No implementation choice avoids this; it is what float32 means for these nets.

:func:`kink_allowance` measures it in float64 for one problem: the elements within ``tau`` of a kink
(relative to their layer's largest |value|), each one's possible re-routing (its upstream gradient, at a
ReLU; the window's upstream gradient moved between the two near-tied values, at a max pool), summed with
random signs and pushed back through the network in one backward pass per draw. The allowance of each
tensor is the largest norm over the draws. It is zero for tensors no kink lies behind (the classifier,
mostly the last stage) — there the float32 criterion is rounding alone.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.runtime.checks import check_input, check_labels

from .weights import _unwrap


def _near_tie_routes(pool: nn.MaxPool2d, y: torch.Tensor, u: torch.Tensor, tau: float
                     ) -> tuple[torch.Tensor, int]:
    """The gradient a max pool could route elsewhere, as a tensor shaped like its input ``y``: for every
    window whose two largest values are within ``tau`` of each other, ``u`` (the window's upstream
    gradient) moved from the larger to the other one."""
    k, s, p = (pool.kernel_size, pool.stride, pool.padding)
    if pool.dilation != 1 or pool.ceil_mode or not all(isinstance(v, int) for v in (k, s, p)):
        raise NotImplementedError("kink_allowance supports square max pools with floor rounding")
    n, c, h, w = y.shape
    padded = F.pad(y.detach(), (p, p, p, p), value=float("-inf"))
    windows = F.unfold(padded.reshape(n * c, 1, h + 2 * p, w + 2 * p), k, stride=s)  # (NC, k*k, L)
    index = F.pad(torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w), (p, p, p, p), value=-1.0)
    where = F.unfold(index, k, stride=s)[0].long()  # (k*k, L): input position of each window element
    top, arg = windows.topk(2, dim=1)
    scale = float(y.detach().abs().max())
    near = (top[:, 0] - top[:, 1]) <= tau * scale  # (NC, L)
    flows = u.detach().reshape(n * c, -1) * near
    routes = torch.zeros(n * c, h * w, dtype=y.dtype)
    column = torch.arange(where.shape[1])
    routes.scatter_add_(1, where[arg[:, 0], column], -flows)
    routes.scatter_add_(1, where[arg[:, 1], column], flows)
    return routes.reshape(n, c, h, w), int(near.sum())


def _gradients(net: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """Train-mode gradients of the trainable parameters, on a copy (the BatchNorm buffers stay as they are)."""
    net = copy.deepcopy(net)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.enable_grad():
        return list(torch.autograd.grad(F.cross_entropy(net(inputs), target), params))


def kink_allowance(model: nn.Module, x: np.ndarray, labels: Sequence[int] | np.ndarray, tau: float = 1e-5,
                   draws: int = 8, seed: int = 0, carry_to: nn.Module | None = None, lr: float = 0.0
                   ) -> dict[str, object]:
    """Per canonical parameter key (trainable ones) and for the input, the norm by which a float32 train
    step's gradient may differ from this float64 model's through kinks alone (see the module docstring).

    ``model`` must be a float64 torch_impl network; it is not modified (a copy runs, in train mode, with
    the mean softmax cross-entropy ``train_step_numpy`` uses). Returns ``{"grads": {key: float},
    "input_grad": float, "elements": near-kink elements found}``.

    With ``carry_to`` (the same network at the weights the next step starts from), also ``"carried"``:
    how far the next step's gradients move when that step starts from weights that the kinks of this one
    moved, by ``-lr`` times each draw's rerouted gradient (evaluated in float64, max over the draws).
    """
    network = _unwrap(model)
    if next(network.parameters()).dtype != torch.float64:
        raise ValueError("kink_allowance measures in float64: build the model with dtype='float64'")
    net = copy.deepcopy(network)
    for module in net.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # the pre-activation must stay in the graph
    array = check_input(x, net.spec, channels_last=False, backend="torch_impl")
    inputs = torch.tensor(array, dtype=torch.float64).requires_grad_()
    trainable = [(name, p) for name, p in net.named_parameters() if p.requires_grad]

    seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        seen.append((module, args[0], out))

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
    net.train()
    try:
        logits = net(inputs)
        target = torch.as_tensor(check_labels(labels, int(logits.shape[0]), int(logits.shape[1])))
        F.cross_entropy(logits, target).backward(retain_graph=True)
    finally:
        for hook in hooks:
            hook.remove()

    sources, reroutes, count = [], [], 0
    for module, before, after in seen:
        if after.grad is None:
            continue
        if isinstance(module, nn.ReLU):
            z = before.detach()
            near = (z.abs() <= tau * float(z.abs().max())) & (z != 0)  # exact zeros are zeros in float32 too
            reroutes.append(after.grad * near)
            count += int(near.sum())
        else:
            routes, n = _near_tie_routes(module, before, after.grad, tau)
            reroutes.append(routes)
            count += n
        sources.append(before)

    targets = [p for _, p in trainable] + [inputs]
    worst = [0.0] * len(targets)
    carried = [0.0] * len(trainable)
    if carry_to is not None:
        carry_from = _unwrap(carry_to)
        next_inputs = inputs.detach()
        next_grads = _gradients(carry_from, next_inputs, target)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(draws if count else 0):
        signed = [r * (torch.randint(0, 2, r.shape, generator=rng, dtype=torch.float64) * 2 - 1) for r in reroutes]
        moved = torch.autograd.grad(sources, targets, signed, retain_graph=True, allow_unused=True)
        worst = [max(w, float(m.norm()) if m is not None else 0.0) for w, m in zip(worst, moved)]
        if carry_to is not None:
            shifted = copy.deepcopy(carry_from)
            with torch.no_grad():
                for p, m in zip((p for p in shifted.parameters() if p.requires_grad), moved[:-1]):
                    if m is not None:
                        p -= lr * m
            changed = _gradients(shifted, next_inputs, target)
            carried = [max(c, float((a - b).norm())) for c, a, b in zip(carried, changed, next_grads)]
    found: dict[str, object] = {"grads": {name: w for (name, _), w in zip(trainable, worst)},
                                "input_grad": worst[-1], "elements": count}
    if carry_to is not None:
        found["carried"] = {name: c for (name, _), c in zip(trainable, carried)}
    return found
