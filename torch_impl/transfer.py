"""Transfer learning: freeze the backbone, re-head the classifier (``docs/backend-contract.md``).

Frozen means two things, as Keras' ``trainable=False`` does: every parameter outside ``fc`` gets
``requires_grad=False`` (optimisers skip it, no gradient is computed for it), **and** the backbone's
BatchNorm layers stay in eval mode whatever ``model.train()`` says — ``requires_grad=False`` alone would
still let train-mode BatchNorm normalise with batch statistics and overwrite its running statistics.
The second half is :meth:`Network.train`, which re-applies eval to those layers while
``model.backbone_frozen`` is set.
"""

from __future__ import annotations

from torch import nn

from common.errors import GroupnetsError

from .model import Network
from .weights import _unwrap


def _network(model: nn.Module) -> Network:
    network = _unwrap(model)
    if not isinstance(network, Network):
        raise GroupnetsError(f"expected a whole network built by torch_impl (with an 'fc' classifier), "
                             f"got {type(network).__name__}")
    return network


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Only ``fc`` trains: every other parameter gets ``requires_grad=False`` and every backbone
    BatchNorm stays in eval mode (now and after any later ``model.train()``) until :func:`unfreeze`.
    Returns ``model``. Build the optimiser afterwards, over the parameters that still require grad."""
    network = _network(model)
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name.split(".")[0] == "fc")
    network.backbone_frozen = True
    network.train(network.training)  # re-apply the current mode: backbone BatchNorm → eval
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_backbone`: every parameter trains, every BatchNorm follows the model's mode."""
    network = _network(model)
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    network.backbone_frozen = False
    network.train(network.training)
    return model


def reset_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace ``fc`` by a fresh, trainable ``num_classes``-way layer (``model.spec`` follows);
    the function form of :meth:`Network.reset_classifier`. Returns ``model``."""
    _network(model).reset_classifier(num_classes)
    return model
