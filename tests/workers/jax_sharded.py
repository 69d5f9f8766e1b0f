"""The training problem's step with the batch sharded over the XLA host devices, in a fresh process.

``python -m workers.jax_sharded KIND MODEL DIRECTORY STEPS LR MOMENTUM DECAY DTYPE...`` (from ``tests/``, with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``, ``JAX_ENABLE_X64=1``, ``KERAS_BACKEND=jax``) reads
``problem.npz`` and writes ``result.npz``: per dtype the result of :func:`common.check.train_verify.run_train_step`
under data parallelism —

- ``flax``: ``flax_impl.train_step_numpy(..., mesh=...)`` on a one-axis mesh of every device;
- ``keras-jax``: ``keras_impl.train_step_numpy`` with ``keras.distribution.DataParallel`` over every
  device set before the model is built (its variables replicated, the batch split by its data layout);

plus ``<dtype>/devices``: over how many devices the model's weights were laid out after the step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import store
from common.check.backends import load_backend
from common.check.compare import to_nchw, to_nhwc
from harness import train_spec
from parallel_runs import read_problem

KINDS = ("flax", "keras-jax")


def _devices_of_weights(kind: str, model) -> int:
    """How many devices hold the weights after the step (the first parameter's layout)."""
    if kind == "flax":
        import jax
        from flax import nnx
        leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
        return len(leaf.sharding.device_set)
    return len(model.trainable_variables[0].value.sharding.device_set)


def main(kind: str, model: str, directory: str, steps: str, lr: str, momentum: str, decay: str, *dtypes: str) -> None:
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}; choose from {KINDS}")
    import jax
    if len(jax.devices()) < 2:
        raise SystemExit(f"needs at least 2 devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}), got {jax.devices()}")
    root = Path(directory)
    weights, x, labels = read_problem(root)
    spec = train_spec(model)
    options: dict = {}
    if kind == "flax":
        options["mesh"] = jax.make_mesh((len(jax.devices()),), ("batch",))
    else:
        import keras
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    backend = load_backend("flax" if kind == "flax" else "keras")
    out: dict = {}
    for dtype in dtypes:  # as common.check.train_verify.run_train_step, keeping the model to see its layout
        net = backend.build(spec, dtype=dtype, weights=weights)
        result = dict(backend.train_step_numpy(net, to_nhwc(x).astype(dtype), labels,
                                               lr=float(lr), momentum=float(momentum), weight_decay=float(decay),
                                               steps=int(steps), **options))
        result["input_grad"] = to_nchw(np.asarray(result["input_grad"]))
        out[dtype] = {**result, "after": backend.export_weights(net), "devices": np.asarray(_devices_of_weights(kind, net))}
    partial = root / "result.partial.npz"
    np.savez(partial, **store.flatten(out))
    os.replace(partial, root / "result.npz")


if __name__ == "__main__":
    main(*sys.argv[1:])
