"""The seed-style baseline: ShuffleNet V1 as a common Keras write-up builds it.

Grouped 1x1 convs as per-group channel slices + separate ``Conv2D`` + ``Concatenate``; the channel
shuffle as reshape / transpose / reshape; ``padding="same"`` everywhere. Random weights — it exists
only to be timed against groupnets' own paths (its numerics differ: "same" padding, see README).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from common.spec import ir


def _grouped_conv(x, op: ir.Conv2d):
    if op.groups == 1:
        return layers.Conv2D(op.out_channels, op.kernel_size, op.stride, padding="same", use_bias=False)(x)
    if op.is_depthwise:
        return layers.DepthwiseConv2D(op.kernel_size, op.stride, padding="same", use_bias=False)(x)
    per_in, per_out = op.in_channels // op.groups, op.out_channels // op.groups
    outs = [layers.Conv2D(per_out, op.kernel_size, op.stride, padding="same", use_bias=False)(
        x[..., g * per_in:(g + 1) * per_in]) for g in range(op.groups)]
    return layers.Concatenate()(outs)


def _shuffle(x, groups: int):
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    x = ops.reshape(x, (-1, h, w, groups, c // groups))
    x = ops.transpose(x, (0, 1, 2, 4, 3))
    return ops.reshape(x, (-1, h, w, c))


def _apply(node, x):
    if isinstance(node, ir.Conv2d):
        return _grouped_conv(x, node)
    if isinstance(node, ir.BatchNorm2d):
        return layers.BatchNormalization()(x)
    if isinstance(node, ir.ReLU):
        return layers.ReLU()(x)
    if isinstance(node, ir.MaxPool2d):
        return layers.MaxPooling2D(node.kernel_size, node.stride, padding="same")(x)
    if isinstance(node, ir.AvgPool2d):
        return layers.AveragePooling2D(node.kernel_size, node.stride, padding="same")(x)
    if isinstance(node, ir.ChannelShuffle):
        return _shuffle(x, node.groups)
    if isinstance(node, (ir.Sequential, ir.Stage)):
        for _, child in node.children():
            x = _apply(child, x)
        return x
    if isinstance(node, ir.ShuffleV1Block):
        branch = _apply(node.branch, x)
        if node.shortcut is None:
            return layers.ReLU()(layers.Add()([x, branch]))
        return layers.ReLU()(layers.Concatenate()([_apply(node.shortcut, x), branch]))
    raise TypeError(f"naive baseline covers ShuffleNet V1 only, not {type(node).__name__}")


def build_naive(spec: ir.NetworkSpec, size: int = 224) -> keras.Model:
    inputs = keras.Input((size, size, spec.in_channels))
    x = inputs
    for _, layer in spec.stem:
        x = _apply(layer, x)
    for stage in spec.stages:
        x = _apply(stage, x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(spec.num_classes)(x))
