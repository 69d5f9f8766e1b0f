"""IR containers → functional Keras graphs (NHWC): ``Sequential``, the three block kinds, ``Stage`` and
whole networks. Every layer is named by its canonical dotted path (see :func:`layers.keras_name`);
layers without weights get a descriptive suffix (``.pad``, ``.split``, ``.concat``, ``.shuffle`` ...).
"""

from __future__ import annotations

import keras

from common.spec import ir

from .layers import ChannelShuffle, ChannelSplit, GlobalMeanPooling2D, apply_layers, keras_name, leaf_layers


def apply_node(node: object, x, path: str, dtype: str):
    """Apply any IR node (leaf op, ``Sequential``, block or ``Stage``) to the KerasTensor ``x``."""
    if isinstance(node, ir.Sequential):
        for name, child in node.children():
            x = apply_node(child, x, keras_path(path, name), dtype)
        return x
    if isinstance(node, ir.Stage):
        for name, block in node.children():
            x = apply_node(block, x, keras_path(path, name), dtype)
        return x
    if isinstance(node, ir.ShuffleV2Block):
        return shuffle_v2_block(node, x, path, dtype)
    if isinstance(node, ir.ShuffleV1Block):
        return shuffle_v1_block(node, x, path, dtype)
    if isinstance(node, ir.Bottleneck):
        return bottleneck(node, x, path, dtype)
    return apply_layers(leaf_layers(node, path, dtype), x)


def keras_path(prefix: str, name: str) -> str:
    """Canonical dotted path of child ``name`` under ``prefix`` (``""`` for a bare node)."""
    return f"{prefix}.{name}" if prefix else name


def _name(path: str, suffix: str, default: str) -> str:
    return keras_name(path or default, suffix)


def shuffle_v2_block(block: ir.ShuffleV2Block, x, path: str, dtype: str):
    """torchvision ``InvertedResidual``: split / two branches → concat → shuffle(2, paper)."""
    if block.branch1 is None:  # stride 1: half the channels pass through untouched
        x1, x2 = ChannelSplit(2, name=_name(path, "split", "block"), dtype=dtype)(x)
        left, right = x1, apply_node(block.branch2, x2, keras_path(path, "branch2"), dtype)
    else:
        left = apply_node(block.branch1, x, keras_path(path, "branch1"), dtype)
        right = apply_node(block.branch2, x, keras_path(path, "branch2"), dtype)
    out = keras.layers.Concatenate(axis=-1, name=_name(path, "concat", "block"), dtype=dtype)([left, right])
    return ChannelShuffle(2, "paper", name=_name(path, "shuffle", "block"), dtype=dtype)(out)


def shuffle_v1_block(block: ir.ShuffleV1Block, x, path: str, dtype: str):
    """ShuffleNet V1 unit: ``relu(x + branch(x))`` or ``relu(cat(shortcut(x), branch(x)))``."""
    branch = apply_node(block.branch, x, keras_path(path, "branch"), dtype)
    if block.shortcut is None:
        out = keras.layers.Add(name=_name(path, "add", "block"), dtype=dtype)([x, branch])
    else:
        shortcut = apply_node(block.shortcut, x, keras_path(path, "shortcut"), dtype)
        # Shortcut first, as Megvii's reference code concatenates.
        out = keras.layers.Concatenate(axis=-1, name=_name(path, "concat", "block"), dtype=dtype)(
            [shortcut, branch])
    return keras.layers.ReLU(name=_name(path, "relu", "block"), dtype=dtype)(out)


def bottleneck(block: ir.Bottleneck, x, path: str, dtype: str):
    """torchvision ``Bottleneck``: relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x))))))) + identity)."""
    def sub(name: str, node: object, t):
        return apply_node(node, t, keras_path(path, name), dtype)

    out = sub("conv1", block.conv1, x)
    out = sub("bn1", block.bn1, out)
    # torchvision reuses one ``relu`` module three times; a functional graph needs one layer per call.
    out = keras.layers.ReLU(name=_name(path, "relu1", "block"), dtype=dtype)(out)
    out = sub("conv2", block.conv2, out)
    out = sub("bn2", block.bn2, out)
    out = keras.layers.ReLU(name=_name(path, "relu2", "block"), dtype=dtype)(out)
    out = sub("conv3", block.conv3, out)
    out = sub("bn3", block.bn3, out)
    identity = x if block.downsample is None else sub("downsample", block.downsample, x)
    out = keras.layers.Add(name=_name(path, "add", "block"), dtype=dtype)([out, identity])
    return keras.layers.ReLU(name=_name(path, "relu", "block"), dtype=dtype)(out)


def network(spec: ir.NetworkSpec, x, dtype: str) -> dict:
    """stem → stages → head → global mean pool → ``fc``; returns every tap of ``spec.stage_names``."""
    taps = {}
    for name, node in spec.stem:
        x = apply_node(node, x, name, dtype)
    taps["stem"] = x
    for stage in spec.stages:
        x = apply_node(stage, x, stage.name, dtype)
        taps[stage.name] = x
    for name, node in spec.head:
        x = apply_node(node, x, name, dtype)
    # Global pool = mean over H, W (torchvision: x.mean([2, 3]) / AdaptiveAvgPool2d(1) + flatten).
    x = GlobalMeanPooling2D(name="global_pool", dtype=dtype)(x)
    taps["pre_logits"] = x
    taps["logits"] = apply_node(spec.fc, x, "fc", dtype)
    return taps
