"""One rank of a ``DistributedDataParallel`` run on CPU (gloo), started by ``torch.multiprocessing``.

What a user's script does under ``torchrun``: build a torch_impl model, wrap it in DDP, train on this
rank's part of the batch with ``torch.optim.SGD``. The rank writes what it saw — its part's logits, loss
and input gradient, the averaged parameter gradients, its BatchNorm buffers after the first step, its
weights after the last — to ``rank<r>.npz`` in the run's directory; the test compares the ranks with the
one-process reference (``torch_impl.train_step_numpy(..., shards=world)``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import store
import torch_impl
from common.weights.porting import running_statistics, to_canonical

#: How long a rank waits for the other at the rendezvous and in a collective before giving up.
TIMEOUT = timedelta(seconds=120)


def _steps(spec, weights, x: np.ndarray, labels: np.ndarray, dtype: str, rank: int, world: int, steps: int,
           lr: float, momentum: float, weight_decay: float) -> dict[str, np.ndarray]:
    model = torch_impl.build(spec, dtype=dtype, weights=weights)
    ddp = DistributedDataParallel(model)  # CPU: no device_ids; buffers broadcast from rank 0 at each forward
    optimizer = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    part = torch.tensor(np.array_split(x, world)[rank], dtype=getattr(torch, dtype)).requires_grad_()
    target = torch.as_tensor(np.array_split(labels, world)[rank], dtype=torch.long)
    ddp.train()
    out: dict = {}
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        logits = ddp(part)
        loss = F.cross_entropy(logits, target)  # this rank's mean; DDP averages the gradients over ranks
        loss.backward()
        if step == 0:
            grads = {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}
            out.update({"logits": logits.detach().numpy().copy(), "loss": np.asarray(float(loss.detach())),
                        "input_grad": part.grad.detach().numpy().copy()})
            out["grads"] = to_canonical(spec, "torch", grads, partial=True)
            out["buffers"] = running_statistics(torch_impl.export_weights(ddp))
        optimizer.step()
    out["after"] = torch_impl.export_weights(ddp)  # through the DDP wrapper
    return store.flatten({dtype: out})


def _sync_batchnorm_refusal(spec, weights, x: np.ndarray, rank: int, world: int) -> str:
    """What ``SyncBatchNorm`` does with CPU tensors in a process group: the message it raises, or ``""``."""
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch_impl.build(spec, weights=weights))
    try:  # DDP checks the module's device when it wraps it; SyncBatchNorm itself the input's, in training
        ddp = DistributedDataParallel(model)
        ddp.train()
        ddp(torch.tensor(np.array_split(x, world)[rank], dtype=torch.float32))
    except ValueError as error:
        return str(error)
    return ""


def run_rank(rank: int, world: int, directory: str, model: str, steps: int, lr: float, momentum: float,
             weight_decay: float, dtypes: tuple[str, ...]) -> None:
    """``torch.multiprocessing.spawn``'s target: this rank's runs, written to ``rank<rank>.npz``."""
    from harness import train_spec  # the tests' training problems (tests/ is on the spawned sys.path)
    from parallel_runs import read_problem

    torch.set_num_threads(1)  # two ranks on two cores
    root = Path(directory)
    weights, x, labels = read_problem(root)
    spec = train_spec(model)
    dist.init_process_group("gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    try:
        out: dict[str, np.ndarray] = {}
        for dtype in dtypes:
            out.update(_steps(spec, weights, x, labels, dtype, rank, world, steps, lr, momentum, weight_decay))
        out["sync_batchnorm_refusal"] = np.asarray(_sync_batchnorm_refusal(spec, weights, x, rank, world))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    partial = root / f"rank{rank}.partial.npz"
    np.savez(partial, **out)
    os.replace(partial, root / f"rank{rank}.npz")  # whole or absent
