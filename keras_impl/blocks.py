"""IR containers → functional Keras graphs (NHWC): ``Sequential``, the three block kinds, ``Stage`` and
whole networks. Every layer is named by its canonical dotted path (see :func:`layers.keras_name`);
layers without weights get a descriptive suffix (``.pad``, ``.split``, ``.concat``, ``.shuffle`` ...).

This is the only place that wires layers together. The wiring functions hand every layer to a
:class:`Wire`: :class:`Build` calls it on KerasTensors (the model), while
:mod:`keras_impl.h5_layout` records the call in a graph of layer classes (the ``.weights.h5`` layout,
without building anything). So a new block kind is one function plus one entry in :data:`WIRING`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import keras

from common.spec import ir

from .layers import ChannelShuffle, ChannelSplit, GlobalMeanPooling2D, keras_name, leaf_layers

#: What flows between layers: a KerasTensor when building, a graph node id when recording a layout.
Handle = Any


@dataclass(frozen=True)
class NewLayer:
    """A block-level layer (concat, add, ...) described, not created: recording a layout needs only its
    class and name (creating them, ~0.15 ms each, would add a tenth to the layout's time)."""

    cls: type[keras.layers.Layer]
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def create(self, dtype: str) -> keras.layers.Layer:
        return self.cls(name=self.name, dtype=dtype, **self.config)


#: A layer a wiring function hands over: created (a leaf op's, from ``leaf_layers``) or still to create.
LayerLike = Union[keras.layers.Layer, NewLayer]


class Wire(Protocol):
    """Where the wiring functions send each layer with its inputs."""

    dtype: str  # the dtype layers are created with

    def call(self, layer: LayerLike, inputs: Handle | Sequence[Handle], outputs: int = 1) -> Any:
        """Apply ``layer`` to ``inputs`` (one handle, or a list for merge layers); ``outputs`` > 1: the
        layer returns that many tensors (``ChannelSplit``), given back as a tuple."""


@dataclass(frozen=True)
class Build:
    """The wire of a real model: each layer is created and called on KerasTensors (which builds it)."""

    dtype: str

    def call(self, layer: LayerLike, inputs: Handle | Sequence[Handle], outputs: int = 1) -> Any:
        if isinstance(layer, NewLayer):
            layer = layer.create(self.dtype)
        y = layer(inputs)
        return y if outputs == 1 else tuple(y)


def keras_path(prefix: str, name: str) -> str:
    """Canonical dotted path of child ``name`` under ``prefix`` (``""`` for a bare node)."""
    return f"{prefix}.{name}" if prefix else name


def _new(cls: type[keras.layers.Layer], path: str, suffix: str, **config: Any) -> NewLayer:
    """The block's weightless layer ``suffix`` (``"add"``, ``"concat"`` ...): named ``{path}.{suffix}``,
    or ``block.{suffix}`` for a bare block."""
    return NewLayer(cls, keras_name(path or "block", suffix), config)


def apply_node(wire: Wire, node: object, x: Handle, path: str) -> Handle:
    """Wire any IR node (leaf op, ``Sequential``, block or ``Stage``) onto ``x``; the kind picks the
    wiring function from :data:`WIRING`, anything else is a leaf op."""
    return WIRING.get(type(node), leaf)(wire, node, x, path)


def leaf(wire: Wire, op: object, x: Handle, path: str) -> Handle:
    """One IR leaf op: the layers :func:`layers.leaf_layers` computes it with, in order."""
    for layer in leaf_layers(op, path, wire.dtype):
        x = wire.call(layer, x)
    return x


def chain(wire: Wire, node: ir.Sequential | ir.Stage, x: Handle, path: str) -> Handle:
    """``Sequential`` / ``Stage``: the children one after the other."""
    for name, child in node.children():
        x = apply_node(wire, child, x, keras_path(path, name))
    return x


def shuffle_v2_block(wire: Wire, block: ir.ShuffleV2Block, x: Handle, path: str) -> Handle:
    """torchvision ``InvertedResidual``: split / two branches → concat → shuffle(2, paper). Megvii's routing
    (``block.routing == "even_odd"``): the split takes even / odd channels (an inverse-direction 2-group
    shuffle, then the split) and the concat is not shuffled."""
    even_odd = block.routing == "even_odd"
    if block.branch1 is None:  # stride 1: half the channels pass through untouched
        if even_odd:
            x = wire.call(_new(ChannelShuffle, path, "unshuffle", groups=2, convention="inverse"), x)
        x1, x2 = wire.call(_new(ChannelSplit, path, "split", sections=2), x, outputs=2)
        left, right = x1, apply_node(wire, block.branch2, x2, keras_path(path, "branch2"))
    else:
        left = apply_node(wire, block.branch1, x, keras_path(path, "branch1"))
        right = apply_node(wire, block.branch2, x, keras_path(path, "branch2"))
    out = wire.call(_new(keras.layers.Concatenate, path, "concat", axis=-1), [left, right])
    if even_odd:
        return out
    return wire.call(_new(ChannelShuffle, path, "shuffle", groups=2, convention="paper"), out)


def shuffle_v1_block(wire: Wire, block: ir.ShuffleV1Block, x: Handle, path: str) -> Handle:
    """ShuffleNet V1 unit: ``relu(x + branch(x))`` or ``relu(cat(shortcut(x), branch(x)))``."""
    branch = apply_node(wire, block.branch, x, keras_path(path, "branch"))
    if block.shortcut is None:
        out = wire.call(_new(keras.layers.Add, path, "add"), [x, branch])
    else:
        shortcut = apply_node(wire, block.shortcut, x, keras_path(path, "shortcut"))
        # Shortcut first, as Megvii's reference code concatenates.
        out = wire.call(_new(keras.layers.Concatenate, path, "concat", axis=-1), [shortcut, branch])
    return wire.call(_new(keras.layers.ReLU, path, "relu"), out)


def bottleneck(wire: Wire, block: ir.Bottleneck, x: Handle, path: str) -> Handle:
    """torchvision ``Bottleneck``: relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x))))))) + identity);
    SA-Net's ``SABottleneck`` (``block.sa``) gates ``bn3``'s output with Shuffle Attention before the add."""
    def sub(name: str, t: Handle) -> Handle:
        return apply_node(wire, getattr(block, name), t, keras_path(path, name))

    def relu(suffix: str, t: Handle) -> Handle:
        # torchvision reuses one ``relu`` module three times; a functional graph needs one layer per call.
        return wire.call(_new(keras.layers.ReLU, path, suffix), t)

    out = relu("relu1", sub("bn1", sub("conv1", x)))
    out = relu("relu2", sub("bn2", sub("conv2", out)))
    out = sub("bn3", sub("conv3", out))
    if block.sa is not None:
        out = sub("sa", out)
    identity = x if block.downsample is None else sub("downsample", x)
    out = wire.call(_new(keras.layers.Add, path, "add"), [out, identity])
    return relu("relu", out)


#: The wiring function of every IR container kind (exact type); any other node is a leaf op.
WIRING: dict[type, Callable[[Wire, Any, Handle, str], Handle]] = {
    ir.Sequential: chain,
    ir.Stage: chain,
    ir.ShuffleV2Block: shuffle_v2_block,
    ir.ShuffleV1Block: shuffle_v1_block,
    ir.Bottleneck: bottleneck,
}


def network(wire: Wire, spec: ir.NetworkSpec, x: Handle) -> dict[str, Handle]:
    """stem → stages → head → global mean pool → ``fc``; returns every tap of ``spec.stage_names``."""
    taps = {}
    for name, node in spec.stem:
        x = apply_node(wire, node, x, name)
    taps["stem"] = x
    for stage in spec.stages:
        x = apply_node(wire, stage, x, stage.name)
        taps[stage.name] = x
    for name, node in spec.head:
        x = apply_node(wire, node, x, name)
    # Global pool = mean over H, W (torchvision: x.mean([2, 3]) / AdaptiveAvgPool2d(1) + flatten).
    x = wire.call(NewLayer(GlobalMeanPooling2D, "global_pool"), x)
    taps["pre_logits"] = x
    taps["logits"] = apply_node(wire, spec.fc, x, "fc")
    return taps


def wire_model(wire: Wire, spec: object, x: Handle) -> tuple[Handle, dict[str, Handle]]:
    """The model's output for input ``x``, and its taps (a network's; ``{}`` for any other node):
    the one entry point shared by the model build and the layout recording."""
    if isinstance(spec, ir.NetworkSpec):
        taps = network(wire, spec, x)
        return taps["logits"], taps
    return apply_node(wire, spec, x, ""), {}
