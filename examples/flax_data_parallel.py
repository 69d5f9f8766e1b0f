"""Train a groupnets model data-parallel in Flax NNX: the batch sharded over a device mesh, one jitted step.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python examples/flax_data_parallel.py   # 2 CPU devices
    python examples/flax_data_parallel.py --coordinator HOST0:1234 --processes 2 --process-id I  # per machine

groupnets adds nothing to the engine: the model is replicated over ``jax.make_mesh`` (every device of every
process), each process's part of the batch becomes one global array sharded along the batch axis, and the
``nnx.jit`` step is the one-device step — XLA partitions it, so BatchNorm statistics cover the *global*
batch, exactly as on one device (tests/test_data_parallel.py; docs/data-parallel.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import flax_impl  # noqa: E402
from flax_impl.training import replicate, sgd, shard_batch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for several processes")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)
    if args.coordinator:  # before any other JAX call
        jax.distributed.initialize(args.coordinator, args.processes, args.process_id)

    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    model = flax_impl.create_model(args.model, num_classes=args.classes, rngs=nnx.Rngs(0))  # same in every process
    replicate(model, mesh)  # before the optimiser, whose momentum follows the parameters' layout
    optimizer = nnx.Optimizer(model, sgd(0.05, 0.9, 1e-4), wrt=nnx.Param)  # torch.optim.SGD's coupled decay

    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        def loss_fn(model: nnx.Module) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(jax.process_index())  # this process's data (a stand-in for a real loader)
    model.train()
    for i in range(args.steps):
        x = shard_batch(rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32), mesh)
        y = shard_batch(rng.integers(0, args.classes, args.batch).astype(np.int32), mesh)
        loss = step(model, optimizer, x, y)
        if jax.process_index() == 0:
            print(f"step {i}: loss {float(loss):.4f} (global batch {x.shape[0]} on {len(x.sharding.device_set)} devices)")
    if jax.process_index() == 0:  # replicated: every process holds the full weights
        weights = flax_impl.export_weights(model)
        print(f"trained; {len(weights)} canonical tensors exportable from process 0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
