"""The three residual units. Each registers its already-built children under the IR's names
(``node.children()``), so ``state_dict`` keys are torchvision's; ``forward`` holds the block semantics.

Branching is on ``stride`` / optional children only (fixed at build time), never on data, so the
blocks trace, ``torch.compile`` and ONNX-export without graph breaks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from common.spec import ir

from .layers import channel_split, concat_shuffle

NamedModules = Iterable[tuple[str, nn.Module]]


class ShuffleV2Block(nn.Module):
    """torchvision ``InvertedResidual``: split (stride 1) or duplicate (stride 2), two branches, concat,
    shuffle with 2 groups. With Megvii's routing (``node.routing == "even_odd"``): even channels pass,
    odd ones enter the branch, and the concat is not shuffled."""

    def __init__(self, node: ir.ShuffleV2Block, children: NamedModules) -> None:
        super().__init__()
        self.stride = node.stride
        self.even_odd = node.routing == "even_odd"
        for name, module in children:
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.even_odd:
            if self.stride == 1:  # = channel_split(channel_shuffle(x, 2, "inverse"), 2), as strided views
                return torch.cat((x[:, 0::2], self.branch2(x[:, 1::2])), dim=1)
            return torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        if self.stride == 1:
            x1, x2 = channel_split(x, 2)
            return concat_shuffle(x1, self.branch2(x2))  # = channel_shuffle(cat(...), 2, "paper")
        return concat_shuffle(self.branch1(x), self.branch2(x))


class ShuffleV1Block(nn.Module):
    """ShuffleNet V1 unit: ``relu(x + branch(x))``, or ``relu(cat(shortcut(x), branch(x)))`` when
    strided (shortcut first, like Megvii's code)."""

    def __init__(self, node: ir.ShuffleV1Block, children: NamedModules) -> None:
        super().__init__()
        self.stride = node.stride
        for name, module in children:
            self.add_module(name, module)
        self.relu = nn.ReLU(inplace=True)  # no weights, so not an IR child; applied to a fresh sum/concat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            out = self.branch(x)
            out += x  # in place on the branch's fresh output, as torchvision's Bottleneck: no new buffer
            return self.relu(out)
        return self.relu(torch.cat((self.shortcut(x), self.branch(x)), dim=1))


class Bottleneck(nn.Module):
    """torchvision ResNet ``Bottleneck`` (stride on the grouped 3x3):
    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)``; with ``sa`` (SA-Net's
    ``SABottleneck``) ``relu(sa(bn3(...)) + identity)``."""

    def __init__(self, node: ir.Bottleneck, children: NamedModules) -> None:
        super().__init__()
        for name, module in children:
            self.add_module(name, module)
        if node.downsample is None:
            self.downsample = None  # torchvision keeps the attribute even when there is no projection
        if node.sa is None:
            self.sa = None
        self.relu = nn.ReLU(inplace=True)  # torchvision's one shared, weightless ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.sa is not None:
            out = self.sa(out)
        out += identity  # in place, as torchvision: the conv output is fresh
        return self.relu(out)
