"""How much the BatchNorm rule of a data-parallel engine changes one training step.

Global statistics (one process; JAX sharding; Keras ``DataParallel`` on JAX; ``SyncBatchNorm`` on GPUs)
against per-process statistics (``DistributedDataParallel`` on CPU, or on GPUs without SyncBatchNorm):
the same float64 SGD step on the same weights and batch, with the batch's statistics taken over the whole
batch or over each of ``k`` equal parts (``torch_impl.train_step_numpy(..., shards=k)``, which equals a k-rank
DDP step: tests/test_data_parallel.py). Prints, per ``k``, how far each quantity moves.

    python examples/batchnorm_rules.py --model shufflenet_v2_x1_0 --batch 32 --size 128
"""

from __future__ import annotations

import argparse

import numpy as np

import torch_impl
from common import get_spec, random_input, random_weights
from common.check.random import random_labels


def _relative(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys: list[str]) -> float:
    """‖a − b‖ / ‖b‖ over the concatenation of ``keys``."""
    diff = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in keys)
    size = sum(float(np.sum(b[k] ** 2)) for k in keys)
    return float(np.sqrt(diff / size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shufflenet_v2_x1_0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    spec = get_spec(args.model)
    weights = random_weights(spec, seed=args.seed, dtype="float64")
    x = random_input((args.batch, 3, args.size, args.size), args.seed + 1, "float64")
    labels = random_labels(args.batch, spec.num_classes, args.seed + 2)

    def step(shards: int) -> dict:
        model = torch_impl.build(spec, dtype="float64", weights=weights)
        out = torch_impl.train_step_numpy(model, x, labels, lr=0.1, momentum=0.9, weight_decay=1e-4, shards=shards)
        return {**out, "after": torch_impl.export_weights(model)}

    reference = step(1)
    grads = list(reference["grads"])
    means = [k for k in reference["buffers"] if k.endswith("running_mean")]
    variances = [k for k in reference["buffers"] if k.endswith("running_var")]
    moved = {k: reference["after"][k] - weights[k] for k in grads}
    print(f"{args.model}, float64, batch {args.batch} x 3 x {args.size} x {args.size}, one SGD step (lr 0.1, "
          "momentum 0.9, decay 1e-4): per-process statistics against global ones, relative differences")
    print(f"{'parts':>5} {'per part':>8} {'loss':>9} {'logits':>9} {'gradients':>10} {'BN mean':>9} {'BN var':>9} "
          f"{'step':>9}")
    for shards in args.shards:
        out = step(shards)
        logits = float(np.abs(out["logits"] - reference["logits"]).max() / np.abs(reference["logits"]).max())
        loss = abs(out["loss"] - reference["loss"]) / abs(reference["loss"])
        step_change = _relative({k: out["after"][k] - weights[k] for k in grads}, moved, grads)
        print(f"{shards:>5} {args.batch // shards:>8} {loss:>9.2e} {logits:>9.2e} "
              f"{_relative(out['grads'], reference['grads'], grads):>10.2e} "
              f"{_relative(out['buffers'], reference['buffers'], means):>9.2e} "
              f"{_relative(out['buffers'], reference['buffers'], variances):>9.2e} {step_change:>9.2e}")


if __name__ == "__main__":
    main()
