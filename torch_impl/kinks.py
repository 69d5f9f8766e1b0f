"""How far a float32 gradient may honestly sit from the float64 one: the ReLU and max-pool kinks.

A ReLU's derivative jumps at 0 and a max-pool's where two values of a window tie. Where the float64
pre-activation of an element lies within float32 rounding of such a point, a float32 run — of any framework
— may route that element's gradient the other way. That adds or removes the element's upstream gradient
there, and so changes the gradient of every parameter *before* it (and of the input) by that amount pushed
back through the network. No implementation choice avoids this; it is what float32 means for these nets.

:func:`kink_allowance` measures it in float64 for one problem: the elements within ``tau`` of a kink
(relative to their layer's largest |value|) and each one's rerouting ``v_e`` — the change if float32 flips
it: a ReLU element float64 passes is blocked (−its upstream gradient), one it blocks is passed (+it); a
max-pool window's upstream gradient moves to its near-tied runner-up. Which elements a float32 run flips is
a matter of rounding: a random subset, element ``e`` with some probability ``p_e``. The change it makes to a
tensor, ``X = Σ b_e J_e v_e`` pushed back through the network, has

    E‖X‖² = ‖Σ p_e J_e v_e‖² + Σ p_e (1 − p_e) ‖J_e v_e‖²  ≤  max(A, B),
    A = ‖Σ J_e v_e‖² (every element flipped),  B = Σ ‖J_e v_e‖²

(for one common ``p``; coherent reroutings make ``A`` the larger, cancelling ones ``B``). ``A`` is one
backward pass; ``B`` is the mean of ‖Σ ε_e J_e v_e‖² over draws of random signs ``ε`` (an unbiased
estimate), one backward pass per draw. The allowance of a tensor is ``SPREAD · √max(A, B)``: a tail bound,
not the largest of a few draws (the largest of 8 draws is exceeded by a 9th one time in 9). It is zero for
tensors no kink lies behind (the classifier, mostly the last stage) — there the float32 criterion is
rounding alone.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.runtime.checks import check_input, check_labels

from .training import per_process_forward
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


def _gradients(net: nn.Module, params: dict[str, torch.Tensor], inputs: torch.Tensor, target: torch.Tensor,
               shards: int = 1) -> list[torch.Tensor]:
    """Train-mode gradients at ``params`` (name → tensor, the trainable ones), the rest of ``net`` as it is.
    The BatchNorm buffers a train-mode forward updates in place are fresh copies: ``net`` is not modified."""
    leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    was_training = net.training
    net.train()
    try:
        with torch.enable_grad():
            if shards == 1:
                logits = torch.func.functional_call(net, {**leaves, **buffers}, (inputs,))
            else:  # per_process_forward leaves the buffers as rank 0's: put them back
                logits = per_process_forward(net, inputs, shards, leaves)
                with torch.no_grad():
                    for name, buffer in net.named_buffers():
                        buffer.copy_(buffers[name])
            return list(torch.autograd.grad(F.cross_entropy(logits, target), list(leaves.values())))
    finally:
        net.train(was_training)


#: The allowance in root-mean-square units of the flips' change (module docstring): 3, because a sum of
#: many independent flips is near-Gaussian (beyond 3 σ: 0.3 % of runs for a one-element tensor, far less
#: for larger ones) and ``B``'s estimate from 7 draws is itself uncertain by up to ±27 % (one element).
SPREAD = 3.0


class _SecondMoment:
    """Per tensor: ``A`` (the all-flips draw's squared norm) and the sign draws' mean squared norm ``B``."""

    def __init__(self, n: int) -> None:
        self.all_flips, self.signs, self.draws = [0.0] * n, [0.0] * n, 0

    def add(self, norms: Sequence[float], all_flips: bool) -> None:
        if all_flips:
            self.all_flips = [v * v for v in norms]
        else:
            self.signs = [s + v * v for s, v in zip(self.signs, norms)]
            self.draws += 1

    def allowance(self) -> list[float]:
        return [SPREAD * float(np.sqrt(max(a, s / max(self.draws, 1)))) for a, s in zip(self.all_flips, self.signs)]


def _draws(reroutes: list[torch.Tensor], count: int, rng: torch.Generator):
    """(all_flips, reroutings) per draw: every element flipped, then ``count - 1`` draws of random signs."""
    yield True, list(reroutes)
    for _ in range(count - 1):
        yield False, [r * (torch.randint(0, 2, r.shape, generator=rng, dtype=r.dtype) * 2 - 1) for r in reroutes]


def kink_allowance(model: nn.Module, x: np.ndarray, labels: Sequence[int] | np.ndarray, tau: float = 1e-5,
                   draws: int = 8, seed: int = 0, carry_to: nn.Module | None = None, lr: float = 0.0,
                   shards: int = 1) -> dict[str, object]:
    """Per canonical parameter key (trainable ones) and for the input, the norm by which a float32 train
    step's gradient may differ from this float64 model's through kinks alone (see the module docstring).

    ``model`` must be a float64 torch_impl network; it is not modified (a copy runs, in train mode, with
    the mean softmax cross-entropy ``train_step_numpy`` uses). Returns ``{"grads": {key: float},
    "input_grad": float, "elements": near-kink elements found}``.

    With ``carry_to`` (the same network at the weights the next step starts from), also ``"carried"``:
    how far the next step's gradients move when that step starts from weights that the kinks of this one
    moved, by ``-lr`` times each draw's rerouted gradient (evaluated in float64; the same statistic).

    ``shards > 1``: the problem of that many DistributedDataParallel processes on CPU
    (:func:`torch_impl.training.per_process_forward`: per-process BatchNorm statistics).
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
        logits = per_process_forward(net, inputs, shards)
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
            reroutes.append(after.grad * near * torch.where(z > 0, -1.0, 1.0).to(z.dtype))  # passed ↔ blocked
            count += int(near.sum())
        else:
            routes, n = _near_tie_routes(module, before, after.grad, tau)
            reroutes.append(routes)
            count += n
        sources.append(before)

    targets = [p for _, p in trainable] + [inputs]
    moments, carried = _SecondMoment(len(targets)), _SecondMoment(len(trainable))
    if carry_to is not None:
        carry_from = _unwrap(carry_to)
        start = {name: p for name, p in carry_from.named_parameters() if p.requires_grad}
        next_inputs = inputs.detach()
        next_grads = _gradients(carry_from, start, next_inputs, target, shards)
    rng = torch.Generator().manual_seed(seed)
    for all_flips, flips in (_draws(reroutes, draws, rng) if count else []):
        moved = torch.autograd.grad(sources, targets, flips, retain_graph=True, allow_unused=True)
        moments.add([float(m.norm()) if m is not None else 0.0 for m in moved], all_flips)
        if carry_to is not None:
            shifted = {name: p.detach() - lr * m if m is not None else p.detach()
                       for (name, p), m in zip(start.items(), moved[:-1])}
            changed = _gradients(carry_from, shifted, next_inputs, target, shards)
            carried.add([float((a - b).norm()) for a, b in zip(changed, next_grads)], all_flips)
    allowed = moments.allowance()
    found: dict[str, object] = {"grads": {name: a for (name, _), a in zip(trainable, allowed)},
                                "input_grad": allowed[-1], "elements": count}
    if carry_to is not None:
        found["carried"] = {name: c for (name, _), c in zip(trainable, carried.allowance())}
    return found
