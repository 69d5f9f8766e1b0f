"""The training bridge: one NumPy-in, NumPy-out train step, comparable across backends
(``docs/backend-contract.md``, "Training bridge").

Backend-agnostic Keras 3: the forward is ``model.stateless_call(trainable, non_trainable, x, training=True)``
inside a pure loss function, differentiated by the running backend's own autodiff
(:mod:`keras_impl._autodiff`); the BatchNorm state it returns (running statistics by PyTorch's rule,
``num_batches_tracked + 1``) is assigned back afterwards, and the step is a fresh
``keras.optimizers.SGD(momentum=...)`` (zero momentum buffer, like the torch and flax bridges).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from common.runtime.checks import check_input, check_labels, check_step_hyperparameters
from common.weights.porting import running_statistics, to_canonical

from . import _autodiff
from .layers import exact_mean
from .weights import export_weights, keras_variables


def _check_input(model: keras.Model, x: object, dtype: str) -> np.ndarray:
    array = check_input(x, model.spec, channels_last=True, backend="keras_impl")
    return np.ascontiguousarray(array, dtype=dtype)  # a copy in the model dtype: never the caller's buffer


def cross_entropy(logits: Any, labels: Any) -> Any:
    """Mean softmax cross-entropy of ``(N, C)`` logits against integer labels (``F.cross_entropy``).

    Written with ``max`` / ``exp`` / ``log`` / ``sum`` and :func:`exact_mean` because those keep float64 in
    float64 on every backend (Keras' ``ops.mean`` and its losses' default ``floatx`` dtype would demote it).
    """
    shifted = logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    log_sum = ops.log(ops.sum(ops.exp(shifted), axis=-1))
    picked = ops.squeeze(ops.take_along_axis(shifted, ops.expand_dims(labels, -1), axis=-1), -1)
    return exact_mean(log_sum - picked, 0)


class _ExactSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose momentum is exact in the variable's dtype. Keras casts it with
    ``ops.cast(0.9, "float64")``, which TensorFlow takes through float32 (0.8999999762): from the second
    step on the momentum buffer is off by 2.6e-8 relative (float64 weights after two steps: 7.9e-10 from
    torch's, against 3e-15 on JAX and torch; measured 2026-12-05)."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.momentum == 0 or self.nesterov:
            return super().update_step(gradient, variable, learning_rate)
        m = self.momentums[self._get_variable_index(variable)]
        dtype = keras.backend.standardize_dtype(variable.dtype)
        momentum = ops.convert_to_tensor(np.asarray(self.momentum, dtype=dtype))
        step = ops.multiply(ops.cast(gradient, dtype), ops.cast(learning_rate, dtype))
        self.assign(m, ops.subtract(ops.multiply(m, momentum), step))
        self.assign_add(variable, m)


def sgd(lr: float, momentum: float, dtype: str) -> keras.optimizers.SGD:
    """A fresh ``keras.optimizers.SGD`` whose learning rate is exact in ``dtype``.

    A float ``learning_rate`` becomes a ``floatx`` (float32) variable in Keras, i.e. 0.1 → 0.10000000149
    even for a float64 model; a callable returning a tensor in the model dtype keeps it exact.
    ``weight_decay`` is deliberately *not* Keras' (that one is decoupled, AdamW-style): the bridge adds
    PyTorch's coupled L2 term to the gradients instead.
    """
    rate = ops.convert_to_tensor(np.asarray(lr, dtype=dtype))
    return _ExactSGD(learning_rate=lambda: rate, momentum=float(momentum))


def _coupled_decay(grads: list, params: list, weight_decay: float, dtype: str) -> list:
    """``g + weight_decay · p``, PyTorch's coupled L2 (torch.optim.SGD): the decayed gradient feeds the
    momentum buffer. Keras' own ``weight_decay`` argument is decoupled (``p -= lr·wd·p`` applied
    separately), so it is not used."""
    if not weight_decay:
        return list(grads)
    decay = ops.convert_to_tensor(np.asarray(weight_decay, dtype=dtype))
    return [g + decay * p for g, p in zip(grads, params)]


def train_step_numpy(model: keras.Model, x: np.ndarray, labels: Sequence[int] | np.ndarray, lr: float = 0.0,
                     momentum: float = 0.9, weight_decay: float = 0.0, steps: int = 1) -> dict[str, Any]:
    """One train-mode step on NumPy data (NHWC ``x``, integer ``labels``).

    Forward with ``training=True`` (BatchNorm: batch statistics, running statistics updated by PyTorch's
    rule, ``num_batches_tracked + 1`` — except layers frozen with ``trainable=False``, e.g. by
    :func:`keras_impl.freeze_backbone`, whose BatchNorm stays in inference mode), mean softmax
    cross-entropy, gradients w.r.t. every variable of ``model.trainable_variables`` and w.r.t. the input,
    then, if ``lr > 0``, one step of a fresh :func:`sgd` (``keras.optimizers.SGD``, zero momentum buffer)
    on ``grad + weight_decay * variable`` — PyTorch's coupled L2, i.e. ``torch.optim.SGD(lr, momentum,
    weight_decay)``'s first step — or ``steps`` steps on this batch with that one optimiser (the forward,
    gradients and update repeated; logits, loss and gradients returned are the first step's). A failed forward (e.g. one value per channel in training: ``ValueError``
    "Expected more than 1 value per channel when training") changes nothing: the forward is stateless
    and its BatchNorm state is assigned only after it succeeded.

    Under a ``keras.distribution`` (e.g. ``DataParallel`` on JAX; build the model under it, so its
    variables are laid out by it) the batch is distributed by its data layout, as ``Model.fit`` does.

    Returns ``{"logits": (N, classes), "loss": float, "grads": canonical-key dict of canonical-layout
    gradients (trainable variables only), "input_grad": NHWC}``, all NumPy.
    """
    check_step_hyperparameters(lr, momentum, weight_decay, steps)
    spec = model.spec
    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    array = _check_input(model, x, dtype)
    classes = model.outputs[0].shape[-1]
    if len(model.outputs[0].shape) != 2 or classes is None:
        raise ValueError(f"train_step_numpy needs a model producing (N, classes) logits, got output shape "
                         f"{tuple(model.outputs[0].shape)}")
    target = ops.convert_to_tensor(check_labels(labels, int(array.shape[0]), int(classes)).astype(np.int32))  # JAX without x64

    trainable = list(model.trainable_variables)
    non_trainable = list(model.non_trainable_variables)
    key_of = {id(variable): key for key, variable in keras_variables(model).items()}
    unknown = [v.path for v in trainable if id(v) not in key_of]
    if unknown:  # a variable outside the porting table could not be reported canonically
        raise ValueError(f"trainable variables outside the canonical weights: {unknown[:4]}")

    def loss_fn(params: list, inputs: Any, state_in: list) -> tuple[Any, tuple[Any, list]]:
        logits, state = model.stateless_call(params, state_in, inputs, training=True)
        return cross_entropy(logits, target), (logits, state)

    gradients = _autodiff.gradient_function(loss_fn)
    inputs = ops.convert_to_tensor(array)
    distribution = keras.distribution.distribution()
    if distribution is not None:  # e.g. DataParallel: the batch split as Model.fit splits it
        inputs = keras.distribution.distribute_tensor(inputs, distribution.get_data_layout(inputs.shape))
        target = keras.distribution.distribute_tensor(target, distribution.get_data_layout(target.shape))
    update = None
    for step in range(steps):
        step_loss, (step_logits, state), step_grads, step_input_grad = gradients(
            [ops.convert_to_tensor(v) for v in trainable], inputs, [ops.convert_to_tensor(v) for v in non_trainable])
        if step == 0:
            loss, logits, param_grads, input_grad = step_loss, step_logits, step_grads, step_input_grad
        # The forward succeeded: keep its BatchNorm updates (running stats, num_batches_tracked).
        for variable, value in zip(non_trainable, state):
            variable.assign(value)
        if step == 0:
            first_buffers = running_statistics(export_weights(model))
        if lr > 0 and trainable:
            if update is None:
                update = _autodiff.update_function(
                    sgd(lr, momentum, dtype), trainable,
                    lambda grads, params: _coupled_decay(grads, params, weight_decay, dtype))
            update(list(step_grads))

    framework = {key_of[id(v)]: np.array(ops.convert_to_numpy(g)) for v, g in zip(trainable, param_grads)}
    return {
        "logits": np.array(ops.convert_to_numpy(logits)),
        "loss": float(ops.convert_to_numpy(loss)),
        "grads": to_canonical(spec, "keras", framework, partial=True),
        "input_grad": np.array(ops.convert_to_numpy(input_grad)),
        "buffers": first_buffers,
    }


__all__ = ["cross_entropy", "sgd", "train_step_numpy"]
