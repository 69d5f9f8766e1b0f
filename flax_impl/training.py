"""The training bridge: one NumPy-in, NumPy-out train step, comparable across backends
(``docs/backend-contract.md``, "Training bridge").

One jitted program does the forward (train-mode BatchNorm: batch statistics, PyTorch's running-stat
update), the mean softmax cross-entropy, ``nnx.value_and_grad`` w.r.t. the trainable parameters
(:func:`flax_impl.transfer.trainable_filter`) *and* the input, and — when ``lr > 0`` — one update of a
fresh ``nnx.Optimizer`` (zero momentum) with ``optax.chain(add_decayed_weights(wd), sgd(lr, momentum))``:
coupled L2 decay, exactly ``torch.optim.SGD(lr, momentum, weight_decay)``. More steps call it again.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from common.spec.ir import NetworkSpec
from common.weights.porting import running_statistics, to_canonical

from common.runtime.checks import check_input, check_labels, check_step_hyperparameters

from .bridge import _modes, model_dtype
from .layers import from_host
from .transfer import trainable_filter
from .weights import export_weights


def sgd(lr: Any, momentum: Any, weight_decay: Any) -> optax.GradientTransformation:
    """``torch.optim.SGD(lr, momentum, weight_decay)`` in optax: the decay is added to the gradient
    *before* the momentum trace (coupled L2), not decoupled as in ``optax.sgdw`` / AdamW."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))


def _step(model: nnx.Module, optimizer: nnx.Optimizer | None, x: jax.Array, labels: jax.Array
          ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], jax.Array]:
    """Traced once per (architecture, frozen flags, optimiser, shapes/dtypes): forward, gradients and —
    with an ``optimizer`` — its update, in one program. Later steps of one call reuse the trace."""
    wrt = trainable_filter(model)

    def loss_fn(module: nnx.Module, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = module(inputs)
        if logits.ndim != 2:
            raise ValueError(f"train_step_numpy needs (N, classes) logits, got shape {tuple(logits.shape)}")
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()  # mean over the batch
        return loss, logits

    # graph-mode value_and_grad inside the tree-mode jit: DiffState selects the trainable parameters; its
    # graph bookkeeping runs at trace time only. BatchStat updates made by the forward propagate to `model`.
    grad_fn = nnx.value_and_grad(loss_fn, argnums=(nnx.DiffState(0, wrt), 1), has_aux=True, graph=True)
    (loss, logits), (param_grads, input_grad) = grad_fn(model, x)
    if optimizer is not None:
        optimizer.update(model, param_grads)
    flat = {".".join(str(part) for part in path): jnp.asarray(value.get_value() if isinstance(value, nnx.Variable)
                                                               else value)
            for path, value in nnx.to_flat_state(param_grads)}
    return logits, loss, flat, input_grad


@functools.lru_cache(maxsize=16)
def _transformation(lr: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """One :func:`sgd` object per setting: the optimiser's transformation is part of the jit cache key, so
    a new one per call would recompile every call (Python floats scale exactly in float64: weak types)."""
    return sgd(lr, momentum, weight_decay)


#: Tree-mode ``nnx.jit`` (cheap flattening, like :mod:`flax_impl.bridge`); the model's static attributes
#: (spec, train/eval and frozen flags) and the optimiser's transformation are part of the cache key.
_jitted_step = nnx.jit(_step, graph=False)


def _automatic(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """The same devices and axis names with ``AxisType.Auto`` axes: XLA propagates the batch sharding
    through the unchanged program. (``jax.make_mesh`` makes ``Explicit`` axes by default, under which every
    reshape that splits an axis — the strided convolutions' phase split, the channel shuffle — would need
    its output sharding spelled out.)"""
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def replicate(model: nnx.Module, mesh: jax.sharding.Mesh) -> None:
    """Place every array of ``model`` (parameters, BatchNorm statistics, counters) on every device of
    ``mesh``, in place: data parallelism's model layout."""
    nnx.update(model, jax.device_put(nnx.state(model), NamedSharding(_automatic(mesh), PartitionSpec())))


def shard_batch(array: np.ndarray | jax.Array, mesh: jax.sharding.Mesh) -> jax.Array:
    """The global batch whose part on this process is ``array`` (the whole batch with one process), split
    along its first axis over every device of ``mesh`` (all of its axes):
    ``jax.make_array_from_process_local_data``, so the same call serves one host and several."""
    local = len(mesh.local_devices)
    if array.shape[0] % local:
        raise ValueError(f"a batch of {array.shape[0]} does not split into {local} equal per-device parts")
    return jax.make_array_from_process_local_data(NamedSharding(_automatic(mesh), PartitionSpec(mesh.axis_names)),
                                                  array)


def train_step_numpy(model: nnx.Module, x: np.ndarray, labels: Sequence[int] | np.ndarray, lr: float = 0.0,
                     momentum: float = 0.9, weight_decay: float = 0.0, steps: int = 1,
                     mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """One train-mode step on NumPy data (NHWC ``x``, integer ``labels``).

    Forward in train mode (BatchNorm: batch statistics, running statistics updated by PyTorch's rule and
    ``num_batches_tracked + 1`` — except a backbone frozen by :func:`flax_impl.freeze_backbone`, whose
    BatchNorm stays in inference mode), mean softmax cross-entropy, gradients w.r.t. every trainable
    ``nnx.Param`` (all of them, or only ``fc``'s when frozen) and w.r.t. the input, then, if ``lr > 0``, one
    step of a fresh ``nnx.Optimizer`` (zero momentum) with :func:`sgd` over the trainable parameters — or
    ``steps`` steps on this batch with that one optimiser, each a call of the same compiled program
    (logits, loss and gradients returned are the first step's). The model's train/eval flags are restored afterwards. A failed step (e.g. one value per channel in
    train mode: ``ValueError`` "Expected more than 1 value per channel when training", raised while
    tracing) changes nothing.

    ``mesh``: data parallelism — the batch (and labels) sharded over the mesh's devices, the model
    replicated on them (:func:`replicate`, left so), and the same program, which XLA partitions: BatchNorm
    statistics then cover the global batch, as on one device.

    Returns ``{"logits": (N, classes), "loss": float, "grads": canonical-key dict of canonical-layout
    gradients (trainable parameters only), "input_grad": NHWC}``, all NumPy.
    """
    check_step_hyperparameters(lr, momentum, weight_decay, steps)
    spec = model.spec
    dtype = model_dtype(model)
    array = check_input(x, spec, channels_last=True, backend="flax_impl")
    classes = spec.num_classes if isinstance(spec, NetworkSpec) else getattr(spec, "out_features", None)
    if classes is None:
        raise ValueError(f"train_step_numpy needs a network (or a Linear) producing logits, got "
                         f"{type(model).__name__}")
    target = check_labels(labels, int(array.shape[0]), int(classes)).astype(np.int32)  # int32: fits, with or without x64
    inputs = jnp.asarray(array, dtype)
    labels_on_device = from_host(target)
    if mesh is not None:  # before the optimiser: its momentum is created like the (replicated) parameters
        replicate(model, mesh)
        inputs, labels_on_device = shard_batch(inputs, mesh), shard_batch(labels_on_device, mesh)
    optimizer = None if not lr > 0 else nnx.Optimizer(
        model, _transformation(float(lr), float(momentum), float(weight_decay)), wrt=trainable_filter(model))

    saved = _modes(model)
    try:
        for module, _ in saved:  # = model.train(), without a second traversal; frozen BN stays in eval
            module.use_running_average = False
        logits, loss, flat, input_grad = _jitted_step(model, optimizer, inputs, labels_on_device)
        first_buffers = running_statistics(export_weights(model))  # the optimiser never touches them
        for _ in range(int(steps) - 1):  # the same compiled program; the optimiser carries its momentum
            _jitted_step(model, optimizer, inputs, labels_on_device)
    finally:
        for module, flag in saved:
            module.use_running_average = flag

    grads = to_canonical(spec, "flax", {key: np.asarray(value) for key, value in flat.items()}, partial=True)
    return {"logits": np.asarray(logits), "loss": float(loss), "grads": grads, "input_grad": np.asarray(input_grad),
            "buffers": first_buffers}


__all__ = ["replicate", "sgd", "shard_batch", "train_step_numpy"]
