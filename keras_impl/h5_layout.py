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
:func:`keras_layout` rebuilds that order without building the model: it replays :mod:`keras_impl.blocks`'
wiring on a tiny graph of layer *objects* — the leaf layers straight from
:func:`keras_impl.layers.leaf_layers` (unbuilt, so cheap: no variables), the few block-level layers by
the classes ``blocks`` uses — and runs Keras' ordering on it. Classes are never hard-coded here, and the
layout never depends on layer names (which differ on the torch backend). ``tests/test_convert.py`` checks
the result against files written by ``model.save_weights`` for every family on every Keras backend.

A layer's variables are saved in creation order, trainable first (``Layer.save_own_variables``;
``Dense`` / convolutions save kernel then bias), which is the canonical ``state_dict`` order of the op's
tensors (weight, bias / weight, bias, running_mean, running_var, num_batches_tracked).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import keras

from common.spec import ir
from common.spec.params import leaf_params

from .blocks import _name, keras_path
from .layers import ChannelShuffle, ChannelSplit, GlobalMeanPooling2D, leaf_layers, weight_layer_name
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
    try:  # the very function Keras keys layers with
        from keras.src.utils.naming import to_snake_case
    except ImportError:  # pragma: no cover - a Keras that moved it: the same rule
        def to_snake_case(text: str) -> str:
            text = re.sub(r"\W+", "", text)
            text = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", text)
            return re.sub("([a-z])([A-Z])", r"\1_\2", text).lower()
    return to_snake_case(name)


class _Graph:
    """Layers as nodes (class, name, canonical keys) with their input nodes — one call per layer, as in
    every groupnets model."""

    def __init__(self) -> None:
        self.classes: list[type] = []
        self.names: list[str] = []
        self.params: list[tuple[str, ...]] = []
        self.inputs: list[tuple[int, ...]] = []

    def call(self, cls: type, name: str, inputs: tuple[int, ...], params: tuple[str, ...] = ()) -> int:
        self.classes.append(cls)
        self.names.append(name)
        self.params.append(params)
        self.inputs.append(inputs)
        return len(self.classes) - 1

    def order(self, output: int) -> list[int]:
        """Keras' ``model.layers`` order (``keras.src.ops.function.map_graph`` / ``_build_map``)."""
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


# ------------------------------------------- keras_impl.blocks' wiring, on layer classes instead of tensors
def _node(g: _Graph, node: object, x: int, path: str) -> int:
    if isinstance(node, (ir.Sequential, ir.Stage)):
        for name, child in node.children():
            x = _node(g, child, x, keras_path(path, name))
        return x
    if isinstance(node, ir.ShuffleV2Block):
        return _shuffle_v2_block(g, node, x, path)
    if isinstance(node, ir.ShuffleV1Block):
        return _shuffle_v1_block(g, node, x, path)
    if isinstance(node, ir.Bottleneck):
        return _bottleneck(g, node, x, path)
    keys = tuple(p.key.lstrip(".") for p in leaf_params(path, node))
    holder = weight_layer_name(path, node) if keys else None
    for layer in leaf_layers(node, path, "float32"):
        x = g.call(type(layer), layer.name, (x,), keys if layer.name == holder else ())
    return x


def _shuffle_v2_block(g: _Graph, block: ir.ShuffleV2Block, x: int, path: str) -> int:
    if block.branch1 is None:
        split = g.call(ChannelSplit, _name(path, "split", "block"), (x,))
        left, right = split, _node(g, block.branch2, split, keras_path(path, "branch2"))
    else:
        left = _node(g, block.branch1, x, keras_path(path, "branch1"))
        right = _node(g, block.branch2, x, keras_path(path, "branch2"))
    out = g.call(keras.layers.Concatenate, _name(path, "concat", "block"), (left, right))
    return g.call(ChannelShuffle, _name(path, "shuffle", "block"), (out,))


def _shuffle_v1_block(g: _Graph, block: ir.ShuffleV1Block, x: int, path: str) -> int:
    branch = _node(g, block.branch, x, keras_path(path, "branch"))
    if block.shortcut is None:
        out = g.call(keras.layers.Add, _name(path, "add", "block"), (x, branch))
    else:
        shortcut = _node(g, block.shortcut, x, keras_path(path, "shortcut"))
        out = g.call(keras.layers.Concatenate, _name(path, "concat", "block"), (shortcut, branch))
    return g.call(keras.layers.ReLU, _name(path, "relu", "block"), (out,))


def _bottleneck(g: _Graph, block: ir.Bottleneck, x: int, path: str) -> int:
    def sub(name: str, node: object, t: int) -> int:
        return _node(g, node, t, keras_path(path, name))

    out = sub("bn1", block.bn1, sub("conv1", block.conv1, x))
    out = g.call(keras.layers.ReLU, _name(path, "relu1", "block"), (out,))
    out = sub("bn2", block.bn2, sub("conv2", block.conv2, out))
    out = g.call(keras.layers.ReLU, _name(path, "relu2", "block"), (out,))
    out = sub("bn3", block.bn3, sub("conv3", block.conv3, out))
    identity = x if block.downsample is None else sub("downsample", block.downsample, x)
    out = g.call(keras.layers.Add, _name(path, "add", "block"), (out, identity))
    return g.call(keras.layers.ReLU, _name(path, "relu", "block"), (out,))


def _network(g: _Graph, spec: ir.NetworkSpec, x: int) -> int:
    for name, node in spec.stem:
        x = _node(g, node, x, name)
    for stage in spec.stages:
        x = _node(g, stage, x, stage.name)
    for name, node in spec.head:
        x = _node(g, node, x, name)
    x = g.call(GlobalMeanPooling2D, "global_pool", (x,))
    return _node(g, spec.fc, x, "fc")


@functools.lru_cache(maxsize=16)
def keras_layout(spec: object) -> H5Layout:
    """The ``.weights.h5`` layout of ``keras_impl.build(spec)`` (any dtype; ``num_classes`` changes only
    the ``fc`` shapes, never the layout)."""
    g = _Graph()
    x = g.call(keras.layers.InputLayer, "input", ())
    out = _network(g, spec, x) if isinstance(spec, ir.NetworkSpec) else _node(g, spec, x, "")
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
