"""Train a groupnets model with PyTorch's DistributedDataParallel, unchanged: one process per device.

    torchrun --nproc-per-node 2 examples/torch_ddp.py                     # two CPU processes, this machine
    torchrun --nnodes 2 --node-rank R --nproc-per-node 1 \\
             --rdzv-backend c10d --rdzv-endpoint HOST0:29500 examples/torch_ddp.py   # on each of two machines

groupnets adds nothing to the engine: ``torch_impl.create_model``, ``DistributedDataParallel``, a
``DistributedSampler``, ``torch.optim.SGD``. On GPUs the BatchNorm layers become ``SyncBatchNorm``
(statistics over the global batch); on CPU torch refuses SyncBatchNorm, so each process normalises with its
own part of the batch (docs/data-parallel.md: what that changes, measured). Rank 0 saves canonical weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

import common  # noqa: E402
import torch_impl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default="ddp_weights.safetensors")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR ...
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))

    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = torch_impl.create_model(args.model, num_classes=args.classes).to(device)
    if cuda:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    rng = np.random.default_rng(0)  # generated data standing in for a real data set
    data = TensorDataset(torch.tensor(rng.standard_normal((64, 3, args.size, args.size)), dtype=torch.float32),
                         torch.tensor(rng.integers(0, args.classes, 64)))
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, drop_last=True)

    ddp.train()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ddp(x.to(device)), y.to(device))
            loss.backward()  # gradients averaged over the processes
            optimizer.step()
        if rank == 0:
            print(f"epoch {epoch}: loss {float(loss.detach()):.4f} (rank 0's last batch; {world} processes)")

    if rank == 0:  # export_weights unwraps DDP: canonical keys, loadable by every backend
        path = common.save_weights(args.out, torch_impl.export_weights(ddp), {"model": args.model})
        print(f"saved {path}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
