"""Data-parallel runs for test_data_parallel: each starts its own processes or devices and stops by itself.

- :func:`ddp_outputs`: two ``DistributedDataParallel`` ranks on CPU (gloo), started by
  ``torch.multiprocessing`` (:mod:`workers.torch_ddp`), merged into one :func:`harness.train_outputs`-shaped
  result per dtype.
- :func:`sharded_outputs`: a fresh Python process with two XLA host devices
  (``--xla_force_host_platform_device_count=2``, which must be set before JAX starts) running the Flax step
  with the batch sharded over a mesh, or Keras' ``DataParallel`` on JAX (:mod:`workers.jax_sharded`).

Each is a store entry (:mod:`store`): computed once per run of the suite, by whichever test needs it first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import store
from common import random_weights
from common.check.train_verify import train_inputs
from harness import TRAIN_HYPER, TRAIN_SEED, TRAIN_SHAPE, TRAIN_STEPS, train_spec

TESTS = Path(__file__).resolve().parent
WORLD = 2  # processes (torch) or devices (JAX): one per core of the CI machine
DTYPES = ("float64", "float32")
#: A run that has not finished by then is stopped and fails its tests (a hung rendezvous, a deadlock).
DEADLINE_SECONDS = 600


def _problem(model: str, directory: Path) -> None:
    """The training problem of :func:`harness.train_outputs` (weights, input, labels) for the workers."""
    spec = train_spec(model)
    weights = random_weights(spec, seed=TRAIN_SEED, dtype="float64")
    x, labels = train_inputs(spec, TRAIN_SHAPE, seed=TRAIN_SEED)
    np.savez(directory / "problem.npz", x=x, labels=labels, **{f"weights/{k}": v for k, v in weights.items()})


def read_problem(directory: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """What :func:`_problem` wrote: ``(weights, x, labels)`` — for the workers."""
    problem = np.load(Path(directory) / "problem.npz")
    weights = {key[len("weights/"):]: problem[key] for key in problem.files if key.startswith("weights/")}
    return weights, problem["x"], problem["labels"]


def _by_dtype(flat: dict[str, np.ndarray]) -> dict[str, dict]:
    tree = store.unflatten(flat)
    return {dtype: tree[dtype] for dtype in DTYPES}


def _spawn(target, args: tuple, world: int) -> None:
    """``torch.multiprocessing`` ranks ``0 … world-1`` of ``target(rank, *args)``; a rank's exception is
    re-raised here with its traceback, and ranks still running at the deadline are killed."""
    import torch.multiprocessing as mp
    context = mp.start_processes(target, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} DDP ranks did not finish within {DEADLINE_SECONDS} s")


def ddp_outputs(model: str) -> dict:
    """Per dtype, the DDP ranks' step as one result (train_outputs' keys): the ranks' logits and input
    gradients concatenated in rank order (each input gradient is of its rank's mean loss, i.e. ``WORLD``
    times the global mean's), rank 0's gradients, buffers and weights; plus ``"ranks"``, each rank's own
    raw record, and ``"sync_batchnorm_refusal"``, what SyncBatchNorm said on CPU."""
    from workers.torch_ddp import run_rank

    def compute() -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="groupnets-ddp-") as tmp:
            root = Path(tmp)
            _problem(model, root)
            _spawn(run_rank, (WORLD, str(root), model, TRAIN_STEPS, *TRAIN_HYPER, DTYPES), WORLD)
            ranks = [dict(np.load(root / f"rank{r}.npz")) for r in range(WORLD)]
        return {f"rank{r}/{key}": value for r, flat in enumerate(ranks) for key, value in flat.items()}

    raw = store.unflatten(store.cached(("ddp", model, TRAIN_SEED, TRAIN_SHAPE, TRAIN_STEPS, WORLD), compute))
    ranks = [raw[f"rank{r}"] for r in range(WORLD)]
    merged: dict = {"ranks": ranks, "sync_batchnorm_refusal": [str(r["sync_batchnorm_refusal"]) for r in ranks]}
    for dtype in DTYPES:
        first = ranks[0][dtype]
        merged[dtype] = {
            "logits": np.concatenate([r[dtype]["logits"] for r in ranks]),
            "loss": float(np.mean([float(r[dtype]["loss"]) for r in ranks])),
            "input_grad": np.concatenate([r[dtype]["input_grad"] for r in ranks]) / WORLD,
            "grads": first["grads"], "buffers": first["buffers"], "after": first["after"],
        }
    return merged


def sharded_outputs(kind: str, model: str) -> dict:
    """Per dtype, the step with the batch sharded over two XLA host devices, run by a fresh process:
    ``kind`` ``"flax"`` (``flax_impl.train_step_numpy(..., mesh=...)``) or ``"keras-jax"``
    (``keras_impl.train_step_numpy`` under ``keras.distribution.DataParallel`` on the JAX backend)."""
    def compute() -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix=f"groupnets-{kind}-") as tmp:
            root = Path(tmp)
            _problem(model, root)
            env = {**os.environ, "JAX_ENABLE_X64": "1", "KERAS_BACKEND": "jax",
                   "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={WORLD}"}
            command = [sys.executable, "-m", "workers.jax_sharded", kind, model, str(root), str(TRAIN_STEPS),
                       *map(str, TRAIN_HYPER), *DTYPES]
            done = subprocess.run(command, cwd=TESTS, env=env, capture_output=True, text=True,
                                  timeout=DEADLINE_SECONDS)
            if done.returncode:
                raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
            return dict(np.load(root / "result.npz"))

    return _by_dtype(store.cached((kind, model, TRAIN_SEED, TRAIN_SHAPE, TRAIN_STEPS, WORLD), compute))
