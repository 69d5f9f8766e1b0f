"""Per-stage output shapes, parameters and multiply-adds, computed from the spec alone.

Multiply-adds count convolutions and the classifier (``k·k·in/groups`` per output element, ``in`` per
logit), the convention behind torchvision's "GFLOPS" column and the ShuffleNet papers' "FLOPs".
BatchNorm, ReLU, pooling, shuffle and additions are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import ir
from .params import count_parameters, leaf_params


@dataclass(frozen=True)
class StageSummary:
    name: str
    output_shape: tuple[int, ...]  # (C, H, W) or (C,) / (classes,)
    params: int
    macs: int


@dataclass(frozen=True)
class ModelSummary:
    model: str
    input_shape: tuple[int, int, int]
    stages: tuple[StageSummary, ...]

    @property
    def params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.stages)

    def format_table(self) -> str:
        rows = [f"{self.model}  input {self.input_shape}",
                f"{'stage':<12}{'output':>20}{'params':>14}{'MACs':>16}"]
        for s in self.stages:
            rows.append(f"{s.name:<12}{str(s.output_shape):>20}{s.params:>14,}{s.macs:>16,}")
        rows.append(f"{'total':<12}{'':>20}{self.params:>14,}{self.macs:>16,}")
        rows.append(f"= {self.params / 1e6:.3f} M parameters, {self.macs / 1e9:.3f} GMACs "
                    f"({self.macs / 1e6:.1f} M multiply-adds)")
        return "\n".join(rows)


def trace(node: ir.IRNode, shape: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
    """``(C, H, W)`` in → ``((C, H, W)`` out, multiply-adds) for any IR node below the network level."""
    return node.trace(shape)


def _peak(node: object, shape: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
    """``(output shape, most elements of any tensor inside)`` for ``node`` on one ``(C, H, W)`` row."""
    out, _ = node.trace(shape)
    named = ir.children_of(node)
    peak = max(math.prod(shape), math.prod(out))
    if isinstance(node, (ir.Sequential, ir.Stage)):
        chained, branches = named, ()
    else:  # a leaf, or a block: its own leaves run in order (Bottleneck), each branch reads the block input
        chained = tuple(child for child in named if not ir.children_of(child[1]))
        branches = tuple(child for child in named if ir.children_of(child[1]))
    inner = shape
    for _, child in chained:
        inner, child_peak = _peak(child, inner)
        peak = max(peak, child_peak)
    for _, child in branches:
        peak = max(peak, _peak(child, shape)[1])
    return out, peak


def peak_activation(spec: ir.NetworkSpec, input_size: int | tuple[int, int] = 224) -> int:
    """The most elements one tensor of the network holds for one input row (the stem's or any layer's or
    branch's output): what sets the largest buffer an op-by-op runtime allocates per row."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    shape: tuple[int, int, int] = (spec.in_channels, h, w)
    peak = math.prod(shape)
    for _, layer in (*spec.stem, *((stage.name, stage) for stage in spec.stages), *spec.head):
        shape, layer_peak = _peak(layer, shape)
        peak = max(peak, layer_peak)
    return peak


def summarize(spec: ir.NetworkSpec, input_size: int | tuple[int, int] = 224) -> ModelSummary:
    """Stem, each stage, head and classifier: output shape, trainable parameters, multiply-adds."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    shape: tuple[int, int, int] = (spec.in_channels, h, w)
    rows = []

    def add(name: str, nodes: list[object]) -> None:
        nonlocal shape
        macs = params = 0
        for node in nodes:
            shape, m = trace(node, shape)
            macs += m
            params += count_parameters(node)
        rows.append(StageSummary(name, shape, params, macs))

    add("stem", [layer for _, layer in spec.stem])
    for stage in spec.stages:
        add(stage.name, [stage])
    if spec.head:
        add("head", [layer for _, layer in spec.head])
    fc_params = sum(math.prod(p.shape) for p in leaf_params("fc", spec.fc) if p.trainable)
    rows.append(StageSummary("pool", (shape[0],), 0, 0))
    rows.append(StageSummary("fc", (spec.num_classes,), fc_params, spec.fc.in_features * spec.fc.out_features))
    return ModelSummary(spec.name, (spec.in_channels, h, w), tuple(rows))
