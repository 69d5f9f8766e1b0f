"""Where ``model.save_weights`` puts every canonical tensor in a ``.weights.h5`` file — from the spec alone.

Keras (``saving_lib._save_state``) writes one HDF5 group per layer of ``model.layers``, keyed by the
layer's *class* in snake case plus a per-class counter (``layers/conv2d``, ``layers/conv2d_1`` ...), never
by the layer's name (that is only stored as the group's ``name`` attribute), and numbers a layer's
variables ``"0"``, ``"1"`` ... in the order it saves them::

    /vars                                   attrs: name = the model's name (no datasets)
    /layers/<class>[_<n>]/vars              attrs: name = the layer's name
    /layers/<class>[_<n>]/vars/<i>          the layer's i-th variable (Keras layout and dtype)

``model.layers`` of a functional model is *not* creation order: Keras sorts the graph's layers by
decreasing depth (longest path to the output), ties broken by the order of a depth-first walk from the
output (``keras.src.ops.function.map_graph``). So the counters depend on the graph's wiring.
:func:`keras_layout` rebuilds that order without building the model: it runs :mod:`keras_impl.blocks`'
own wiring with a recording wire (:class:`_Graph`), which notes each layer's class, name, canonical keys
and input layers instead of calling it — cheap: leaf layers come unbuilt (no variables) from
:func:`keras_impl.layers.leaf_layers`, block-level ones as :class:`~keras_impl.blocks.NewLayer`
descriptions that are never created — and runs Keras' ordering on that graph. Classes are never hard-coded here, and
the group keys never depend on layer names (which differ on the torch backend). ``tests/test_convert.py``
checks the result against files written by ``model.save_weights`` for every family.

A layer's variables are saved in creation order, trainable first (``Layer.save_own_variables``;
``Dense`` / convolutions save kernel then bias), which is the canonical ``state_dict`` order of the op's
tensors (weight, bias / weight, bias, running_mean, running_var, num_batches_tracked / SA-Net's cweight,
cbias, sweight, sbias, gn.weight, gn.bias, which :class:`~keras_impl.layers.ShuffleAttention` creates in
that order).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import keras

from common.spec.params import canonical_params

from .blocks import LayerLike, NewLayer, wire_model
from .layers import weight_layer_name
from .model import _default_name


@dataclass(frozen=True)
class LayerEntry:
    """One layer of ``model.layers``: its HDF5 group, its name (the group's ``name`` attribute) and the
    canonical keys of its variables ``"0"``, ``"1"`` ... (empty for a layer without weights)."""

    group: str
    name: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class H5Layout:
    model_name: str
    layers: tuple[LayerEntry, ...]

    @functools.cached_property
    def datasets(self) -> dict[str, str]:
        """HDF5 dataset path (``"layers/conv2d_3/vars/0"``) → canonical key, in ``model.layers`` order."""
        return {f"{entry.group}/vars/{i}": key for entry in self.layers for i, key in enumerate(entry.params)}


def _snake_case(name: str) -> str:
    """A layer class name as Keras keys its group (``TorchBatchNormalization`` → ``torch_batch_normalization``).

    Keras' own rule (``keras.src.utils.naming.to_snake_case``, private), copied rather than imported;
    ``tests/test_convert.py`` compares the groups with files ``model.save_weights`` writes, so a Keras
    that changed the rule fails there."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _held_keys(spec: object) -> dict[str, tuple[str, ...]]:
    """Name of each weight-holding layer → the canonical keys of its variables, in save order."""
    held: dict[str, list[str]] = {}
    for key, param in canonical_params(spec).items():
        held.setdefault(weight_layer_name(param.layer, param.op), []).append(key)
    return {name: tuple(keys) for name, keys in held.items()}


class _Graph:
    """A :class:`keras_impl.blocks.Wire` that records instead of building: layers as nodes (class, name,
    canonical keys) with their input nodes — one call per layer, as in every groupnets model."""

    dtype = "float32"  # layers are only inspected (class, name), never built: any dtype gives the layout

    def __init__(self, held: dict[str, tuple[str, ...]]) -> None:
        self.held = held
        self.classes: list[type] = []
        self.names: list[str] = []
        self.params: list[tuple[str, ...]] = []
        self.inputs: list[tuple[int, ...]] = []

    def add(self, cls: type, name: str, inputs: tuple[int, ...]) -> int:
        """A node for a layer of class ``cls`` named ``name`` reading the nodes ``inputs``; its id."""
        self.classes.append(cls)
        self.names.append(name)
        self.params.append(self.held.get(name, ()))
        self.inputs.append(inputs)
        return len(self.classes) - 1

    def call(self, layer: LayerLike, inputs: int | Sequence[int], outputs: int = 1) -> int | tuple[int, ...]:
        cls = layer.cls if isinstance(layer, NewLayer) else type(layer)  # a NewLayer is never created here
        node = self.add(cls, layer.name, tuple(inputs) if isinstance(inputs, Sequence) else (inputs,))
        return node if outputs == 1 else (node,) * outputs  # a layer's outputs all come from its one node

    def order(self, output: int) -> list[int]:
        """Keras' ``model.layers`` order, without building the model.

        Re-implements ``keras.src.ops.function.map_graph`` / ``_build_map`` (private; Keras has no public
        API that orders a graph's layers before they are built): layers by decreasing depth, ties by
        their first visit in a depth-first walk from the output. ``tests/test_convert.py`` compares the
        resulting groups with ``model.save_weights`` files, so a Keras that orders differently fails there.
        """
        index: dict[int, int] = {}  # layer → position in the depth-first walk from the output (pre-order)
        finished: set[int] = set()
        post: list[int] = []  # Keras' nodes_in_decreasing_depth
        index[output] = 0
        stack = [(output, iter(self.inputs[output]))]
        while stack:
            node, parents = stack[-1]
            for parent in parents:
                if parent not in finished:
                    index.setdefault(parent, len(index))
                    stack.append((parent, iter(self.inputs[parent])))
                    break
            else:
                stack.pop()
                if node not in finished:
                    finished.add(node)
                    post.append(node)
        depth: dict[int, int] = {}
        for node in reversed(post):
            d = depth.setdefault(node, 0)
            for parent in self.inputs[node]:
                depth[parent] = max(d + 1, depth.get(parent, 0))
        return sorted(post, key=lambda n: (-depth[n], index[n]))


@functools.lru_cache(maxsize=16)
def keras_layout(spec: object) -> H5Layout:
    """The ``.weights.h5`` layout of ``keras_impl.build(spec)`` (any dtype; ``num_classes`` changes only
    the ``fc`` shapes, never the layout)."""
    g = _Graph(_held_keys(spec))
    out, _ = wire_model(g, spec, g.add(keras.layers.InputLayer, "input", ()))
    used: dict[str, int] = {}
    layers = []
    for node in g.order(out):
        base = _snake_case(g.classes[node].__name__)
        count = used.get(base)
        used[base] = 0 if count is None else count + 1
        key = base if count is None else f"{base}_{count + 1}"  # saving_lib._get_unique_name
        layers.append(LayerEntry(f"layers/{key}", g.names[node], g.params[node]))
    return H5Layout(_default_name(spec), tuple(layers))


__all__ = ["H5Layout", "LayerEntry", "keras_layout"]
