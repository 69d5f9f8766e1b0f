"""IR node → module: :func:`build` walks any node, :class:`Network` is a whole ``NetworkSpec``.

Attribute names are the IR's ``children()`` names, so ``model.state_dict()`` has exactly the keys of
``common.canonical_params(spec)`` in the same order (torchvision's). Every built module keeps its
IR node as ``.spec``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Union

import numpy as np
import torch
from torch import nn

from common.runtime.dtypes import dtype_name
from common.spec import ir
from common.spec.ir import NetworkSpec
from common.spec.registry import get_spec

from .blocks import Bottleneck, ShuffleV1Block, ShuffleV2Block
from .layers import build_leaf
from .weights import load_weights

DTypeLike = Union[str, torch.dtype, np.dtype, type]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_BLOCKS = {ir.ShuffleV2Block: ShuffleV2Block, ir.ShuffleV1Block: ShuffleV1Block, ir.Bottleneck: Bottleneck}


def resolve_dtype(dtype: DTypeLike) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (or the torch / NumPy equivalents) → ``torch.dtype``."""
    return _DTYPES[dtype_name(dtype)]


class Network(nn.Module):
    """``stem`` → stages → ``head`` → mean over (H, W) → ``fc``, registered under torchvision's names.

    ``forward`` gives logits; :meth:`forward_taps` every ``spec.stage_names`` tap; :meth:`forward_features`
    (unpooled) and :meth:`forward_pre_logits` (pooled, ``(N, num_features)``) serve transfer learning.
    """

    def __init__(self, spec: NetworkSpec, children: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, module in children:
            self.add_module(name, module)
        # Plain tuples of names, fixed at build time: forward loops over them without data-dependence.
        self._stem = tuple(name for name, _ in spec.stem)
        self._stages = tuple(stage.name for stage in spec.stages)
        self._head = tuple(name for name, _ in spec.head)
        # Set by torch_impl.freeze_backbone: the backbone's BatchNorm layers then stay in eval mode.
        self.backbone_frozen = False

    def train(self, mode: bool = True) -> Network:
        """``nn.Module.train``, except that while the backbone is frozen (:func:`torch_impl.freeze_backbone`)
        its BatchNorm layers stay in eval mode: running statistics are used and never updated."""
        super().train(mode)
        if self.backbone_frozen:
            for module in self.backbone_norms():
                module.eval()
        return self

    def backbone_norms(self) -> list[nn.Module]:
        """Every BatchNorm layer outside ``fc``."""
        return [module for name, module in self.named_modules()
                if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and name.split(".")[0] != "fc"]

    def _run(self, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._stem, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before global pooling: ``(N, num_features, h, w)``."""
        return self._run(self._head, self._run(self._stages, self.forward_stem(x)))

    @staticmethod
    def pool(features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))  # global average pool = mean over H, W (as torchvision)

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, num_features)``: the input of ``fc``."""
        return self.pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_pre_logits(x))

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every ``spec.stage_names`` tap: ``stem``, each stage, ``pre_logits``, ``logits``."""
        taps = {"stem": self.forward_stem(x)}
        x = taps["stem"]
        for name in self._stages:
            x = taps[name] = getattr(self, name)(x)
        taps["pre_logits"] = self.pool(self._run(self._head, x))
        taps["logits"] = self.fc(taps["pre_logits"])
        return taps

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a fresh ``num_classes``-way layer (and ``spec`` with it), for fine-tuning."""
        spec = get_spec(self.spec, num_classes)
        weight = self.fc.weight
        self.fc = build(spec.fc, weight.dtype).to(weight.device)
        self.spec = spec


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision's ResNet init (Kaiming-normal, fan-out; SA-Net's code does the same); ShuffleNet V2 keeps
    PyTorch's defaults."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def build(node: object, dtype: DTypeLike = "float32", *, weights: Mapping[str, object] | None = None) -> nn.Module:
    """The ``torch.nn`` module for **any** IR node (leaf op, ``Sequential``, block, ``Stage`` or
    ``NetworkSpec``), with every parameter in ``dtype``. The module keeps ``node`` as ``.spec``.

    ``weights`` (canonical names): loaded strictly — a mismatch raises and no module is returned."""
    if weights is not None:
        module = build(node, dtype)
        load_weights(module, weights)
        return module
    torch_dtype = resolve_dtype(dtype)
    children = [(name, build(child, torch_dtype)) for name, child in ir.children_of(node)]
    if isinstance(node, NetworkSpec):
        module: nn.Module = Network(node, children)
        if node.family in ("resnext", "sa_resnet"):
            _init_like_torchvision(module)
    elif isinstance(node, (ir.Sequential, ir.Stage)):
        module = nn.Sequential(OrderedDict(children))
    elif type(node) in _BLOCKS:
        module = _BLOCKS[type(node)](node, children)
    else:
        module = build_leaf(node, torch_dtype)  # raises TypeError for anything that is not an IR node
    module.spec = node
    module._groupnets_dtype = torch_dtype  # for parameter-free modules, whose dtype is otherwise unknown
    return module


def create_model(name: str | NetworkSpec, num_classes: int | None = None, dtype: DTypeLike = "float32") -> nn.Module:
    """A registered model (or a custom ``NetworkSpec``) with a ``num_classes``-way ``fc``.

    ``num_classes=None`` means 1000 for a name and the spec's own ``fc`` for a ``NetworkSpec``, so a
    10-class spec is not silently re-headed to 1000 classes (as ``common.check.verify`` treats specs).
    """
    return build(get_spec(name, num_classes), dtype)
