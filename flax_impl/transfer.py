"""Transfer learning: freeze the backbone, re-head the classifier (``docs/backend-contract.md``).

Frozen means two things, as Keras' ``trainable=False`` does:

* only ``fc``'s parameters train. NNX has no per-variable ``requires_grad``; the set of trainable
  parameters is a *filter*, :func:`trainable_filter`, which :func:`flax_impl.train_step_numpy` uses for
  both the gradients and its ``nnx.Optimizer``. Use it for your own optimiser too:
  ``nnx.Optimizer(model, tx, wrt=trainable_filter(model))``;
* every backbone BatchNorm stays in inference mode (running statistics used, never updated) whatever
  ``model.train()`` / ``model.eval()`` say: :class:`~flax_impl.layers.BatchNorm2d` ``.frozen``.

Both are static attributes (``Network.backbone_frozen``, ``BatchNorm2d.frozen``), so ``nnx.jit`` retraces
when they change instead of reusing a stale program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from common.errors import GroupnetsError

from .blocks import Container
from .layers import BatchNorm2d
from .model import Network

#: The top-level child that stays trainable when the backbone is frozen.
CLASSIFIER = "fc"


def _network(model: Any) -> Network:
    if not isinstance(model, Network):
        raise GroupnetsError(f"expected a whole network built by flax_impl (with an 'fc' classifier), "
                             f"got {type(model).__name__}")
    return model


def _backbone_norms(network: Network) -> list[BatchNorm2d]:
    """Every BatchNorm2d outside ``fc`` (walked through the containers' own child lists)."""
    found: list[BatchNorm2d] = []

    def walk(module: nnx.Module) -> None:
        if isinstance(module, BatchNorm2d):
            found.append(module)
        elif isinstance(module, Container):
            for _, child in module.named_children():
                walk(child)

    for name, child in network.named_children():
        if name != CLASSIFIER:
            walk(child)
    return found


def _is_classifier_param(path: tuple[Any, ...], value: Any) -> bool:
    return isinstance(value, nnx.Param) and len(path) > 0 and str(path[0]) == CLASSIFIER


def trainable_filter(model: nnx.Module) -> Callable[[tuple[Any, ...], Any], bool] | type[nnx.Param]:
    """The NNX filter of the parameters that train: ``nnx.Param``, or only ``fc``'s while the backbone is
    frozen. Evaluate it again after :func:`freeze_backbone` / :func:`unfreeze`."""
    return _is_classifier_param if getattr(model, "backbone_frozen", False) else nnx.Param


def freeze_backbone(model: Network) -> Network:
    """Only ``fc`` trains: :func:`trainable_filter` then selects ``fc``'s parameters alone, and every
    backbone BatchNorm stays in inference mode (now and after any ``model.train()``) until
    :func:`unfreeze`. Returns ``model``. Build an optimiser afterwards, with ``wrt=trainable_filter(model)``."""
    network = _network(model)
    network.backbone_frozen = True
    for norm in _backbone_norms(network):
        norm.frozen = True
    return model


def unfreeze(model: Network) -> Network:
    """Undo :func:`freeze_backbone`: every parameter trains, every BatchNorm follows the model's mode."""
    network = _network(model)
    network.backbone_frozen = False
    for norm in _backbone_norms(network):
        norm.frozen = False
    return model


def reset_classifier(model: Network, num_classes: int, rngs: nnx.Rngs | None = None) -> Network:
    """Replace ``fc`` by a fresh, trainable ``num_classes``-way layer (``model.spec`` follows via
    ``common.get_spec(model.spec, num_classes)``); the function form of :meth:`Network.reset_classifier`.
    Returns ``model``."""
    _network(model).reset_classifier(num_classes, rngs=rngs)
    return model


def is_frozen(model: nnx.Module) -> bool:
    """Whether :func:`freeze_backbone` is in effect."""
    return bool(getattr(model, "backbone_frozen", False))


__all__ = ["freeze_backbone", "is_frozen", "reset_classifier", "trainable_filter", "unfreeze"]
