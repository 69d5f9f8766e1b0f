"""``value_and_grad`` on whichever framework Keras is running on — the one backend-specific spot of keras_impl.

Why this exists: Keras 3 has no public, backend-agnostic gradient API. Its stateless APIs
(``Layer.stateless_call``, ``Optimizer.apply``) are backend-agnostic, but differentiation lives in each
backend's trainer (``jax.value_and_grad`` / ``tf.GradientTape`` / ``torch.autograd``) and ``Model.train_step``
returns neither parameter nor input gradients. The training bridge needs both, so this module calls the
active backend's own autodiff.

It never imports a framework: it takes the module Keras itself has already imported for its backend from
``sys.modules`` (``keras.backend.backend()`` is ``"tensorflow"``, ``"jax"`` or ``"torch"``, also the module
names). So ``keras_impl`` still imports only ``keras`` and can never load a framework Keras is not using.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import keras

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")


def _framework() -> tuple[str, ModuleType]:
    name = keras.backend.backend()
    if name not in SUPPORTED_BACKENDS:
        raise NotImplementedError(f"gradients are implemented for the Keras backends {SUPPORTED_BACKENDS}, "
                                  f"not {name!r}")
    module = sys.modules.get(name)
    if module is None:  # Keras imports its backend's framework at startup; this would be a Keras change
        raise RuntimeError(f"Keras runs on {name!r} but {name!r} is not imported")
    return name, module


def gradient_function(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any, list, Any]]:
    """``fn(params, x, *rest) -> (loss, aux)`` → a callable ``(params, x, *rest) -> (loss, aux,
    param_grads, x_grad)`` differentiating w.r.t. every tensor of ``params`` and ``x`` (not ``rest``).

    ``params``, ``x`` and ``rest`` are backend tensors; ``fn`` must be pure (e.g. built on
    ``stateless_call``). The callable can be called again (the next training step): on JAX it is compiled
    once. A parameter the loss does not depend on gets a zero gradient.
    """
    name, fw = _framework()
    if name == "jax":
        # jitted, as Keras's own JAX trainer runs its train step: eagerly, every op of the forward and the
        # backward pass compiled on its own (ShuffleNet V1 g3 train step: 40-60 s in CI, 2026-12-01)
        step = fw.jit(fw.value_and_grad(fn, argnums=(0, 1), has_aux=True))

        def jax_call(params: Sequence[Any], x: Any, *rest: Any) -> tuple[Any, Any, list, Any]:
            (loss, aux), (param_grads, x_grad) = step(list(params), x, *rest)
            return loss, aux, list(param_grads), x_grad
        return jax_call
    if name == "tensorflow":
        def tf_call(params: Sequence[Any], x: Any, *rest: Any) -> tuple[Any, Any, list, Any]:
            params = [fw.convert_to_tensor(p) for p in params]
            x = fw.convert_to_tensor(x)
            with fw.GradientTape() as tape:
                tape.watch(params)
                tape.watch(x)
                loss, aux = fn(params, x, *rest)
            grads = tape.gradient(loss, [*params, x], unconnected_gradients=fw.UnconnectedGradients.ZERO)
            return loss, aux, list(grads[:-1]), grads[-1]
        return tf_call

    def torch_call(params: Sequence[Any], x: Any, *rest: Any) -> tuple[Any, Any, list, Any]:
        # fresh leaves (no aliasing of the variables' autograd state), gradients without .grad side effects
        params = [p.detach().requires_grad_(True) for p in params]
        x = x.detach().requires_grad_(True)
        with fw.enable_grad():
            loss, aux = fn(params, x, *rest)
            grads = fw.autograd.grad(loss, [*params, x], allow_unused=True)
        grads = [fw.zeros_like(t) if g is None else g for t, g in zip([*params, x], grads)]
        return loss.detach(), aux, grads[:-1], grads[-1]
    return torch_call


def update_function(optimizer: keras.optimizers.Optimizer, variables: Sequence[Any],
                    transform: Callable[[list, list], list]) -> Callable[[Sequence[Any]], None]:
    """A callable ``(grads) -> None`` doing ``optimizer.apply(transform(grads, values), variables)``: one
    step on the variables in place, the optimiser's own state (momentum) carried to the next call.

    On JAX the step is one compiled program (``stateless_apply`` under ``jax.jit``, compiled once for all
    calls), as Keras's own JAX trainer runs it: eagerly, every op of the update compiled on its own, per
    variable shape (3-5 s of a ShuffleNet train step, 2026-12-02). TensorFlow refuses ``stateless_apply``
    and torch compiles nothing eagerly, so there the optimizer applies as usual."""
    name, fw = _framework()
    variables = list(variables)
    if name != "jax":
        def eager_apply(grads: Sequence[Any]) -> None:
            optimizer.apply(transform(list(grads), [keras.ops.convert_to_tensor(v) for v in variables]), variables)
        return eager_apply
    optimizer.build(variables)

    def step(optimizer_values: list, step_grads: list, values: list) -> tuple[list, list]:
        return optimizer.stateless_apply(optimizer_values, transform(step_grads, values), values)
    compiled = fw.jit(step)

    def jax_apply(grads: Sequence[Any]) -> None:
        new_values, new_state = compiled([v.value for v in optimizer.variables], list(grads),
                                         [v.value for v in variables])
        for variable, value in zip(variables, new_values):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, new_state):
            variable.assign(value)
    return jax_apply
