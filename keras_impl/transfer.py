"""Transfer learning: freeze the backbone, pre-logits features, re-head the classifier
(``docs/backend-contract.md``, "Transfer learning").

Keras' own idiom is exactly the contract's semantics: a layer with ``trainable=False`` has no trainable
variables (no gradients, optimisers skip it) **and** a frozen BatchNormalization runs in inference mode
even when called with ``training=True`` (:class:`~keras_impl.layers.TorchBatchNormalization` keeps that
rule), so its running statistics are used and never updated.
"""

from __future__ import annotations

import keras

from common.errors import GroupnetsError
from common.spec.ir import NetworkSpec
from common.spec.registry import get_spec

from .layers import keras_name
from .model import GroupNet
from .weights import export_weights, load_weights

#: Canonical path of the classifier, the one layer that keeps training when the backbone is frozen.
CLASSIFIER = "fc"


def _network(model: keras.Model) -> GroupNet:
    if not isinstance(model, GroupNet) or not isinstance(getattr(model, "spec", None), NetworkSpec):
        raise GroupnetsError(f"expected a whole network built by keras_impl (with an {CLASSIFIER!r} classifier), "
                             f"got {type(model).__name__}")
    return model


def classifier(model: keras.Model) -> keras.layers.Layer:
    """The ``fc`` layer of a network."""
    return _network(model).get_layer(keras_name(CLASSIFIER))


def freeze_backbone(model: keras.Model) -> keras.Model:
    """Only ``fc`` trains: every other layer gets ``trainable=False`` (no gradients, no optimiser
    updates, BatchNorm in inference mode whatever ``training`` says) until :func:`unfreeze`.
    Returns ``model``. ``model.trainable_variables`` is then ``fc``'s kernel and bias; compile (or build an
    optimiser) afterwards."""
    head = classifier(model)
    for layer in model.layers:
        layer.trainable = layer is head
    return model


def unfreeze(model: keras.Model) -> keras.Model:
    """Undo :func:`freeze_backbone`: every layer trains, every BatchNorm follows ``training``."""
    _network(model)
    for layer in model.layers:
        layer.trainable = True
    return model


def is_frozen(model: keras.Model) -> bool:
    """Whether the backbone is frozen (every layer but ``fc`` has ``trainable=False``)."""
    head = classifier(model)
    return head.trainable and all(not layer.trainable for layer in model.layers if layer is not head)


def feature_extractor(model: keras.Model) -> keras.Model:
    """A ``keras.Model`` from the network's input to its pre-logits features ``(N, num_features)`` — the
    input of ``fc`` (global mean pool of the last stage). It shares the network's layers and variables:
    no copy, training either trains both."""
    network = _network(model)
    features = getattr(network, "tap_tensors", {}).get("pre_logits")
    if features is None:
        features = classifier(network).input
    return keras.Model(network.inputs[0], features, name=f"{network.name}_features")


def reset_classifier(model: keras.Model, num_classes: int) -> GroupNet:
    """A **new** network with a fresh, trainable ``num_classes``-way ``fc`` (Keras' default init) and every
    other weight and BatchNorm buffer of ``model`` (copied bit-exactly through canonical weights);
    ``spec`` is ``common.get_spec(model.spec, num_classes)``. A frozen backbone stays frozen.
    ``model`` itself is not changed (a functional Keras graph cannot swap a layer in place)."""
    network = _network(model)
    spec = get_spec(network.spec, num_classes)
    new = GroupNet(spec, dtype=network.groupnets_dtype, name=network.name)
    kept = {k: v for k, v in export_weights(network).items() if k.split(".", 1)[0] != CLASSIFIER}
    load_weights(new, kept, strict=False)
    flags = {layer.name: layer.trainable for layer in network.layers}
    head = classifier(new)
    for layer in new.layers:
        layer.trainable = True if layer is head else flags.get(layer.name, True)
    return new


__all__ = ["classifier", "feature_extractor", "freeze_backbone", "is_frozen", "reset_classifier", "unfreeze"]
