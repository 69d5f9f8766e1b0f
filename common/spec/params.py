"""Canonical parameter names, shapes and dtypes, derived from a spec alone.

The canonical weight format is PyTorch's ``state_dict``: torchvision key names, OIHW conv kernels,
``(out, in)`` dense weights, BatchNorm ``weight``/``bias``/``running_mean``/``running_var``/
``num_batches_tracked`` (int64 scalar). A torchvision checkpoint therefore *is* a canonical weight set.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ir import BatchNorm2d, Conv2d, IRNode, Linear, ParamRole, ShuffleAttention, iter_leaves

@dataclass(frozen=True)
class ParamInfo:
    """One canonical tensor: where it lives, what it is, its shape and whether it is trained."""

    key: str  # e.g. "stage2.0.branch1.0.weight"
    layer: str  # e.g. "stage2.0.branch1.0"
    op: Conv2d | BatchNorm2d | Linear | ShuffleAttention
    role: ParamRole
    shape: tuple[int, ...]
    trainable: bool

    @property
    def is_integer(self) -> bool:
        return self.role == "num_batches_tracked"


def leaf_params(layer: str, op: object) -> list[ParamInfo]:
    """The canonical tensors of one leaf op, in ``state_dict`` order; ``[]`` for ops without weights."""
    own = op.own_params() if isinstance(op, IRNode) else ()
    return [ParamInfo(f"{layer}.{role}", layer, op, role, shape, trainable) for role, shape, trainable in own]


def canonical_params(node: object) -> dict[str, ParamInfo]:
    """Every canonical key of ``node`` (a :class:`NetworkSpec` or any IR node: a single primitive's keys
    are then ``"weight"`` / ``"0.weight"`` ...) → its :class:`ParamInfo`, in torch ``state_dict`` order."""
    out = {}
    for layer, op in iter_leaves(node):
        for p in leaf_params(layer, op):
            key = p.key.lstrip(".")
            out[key] = ParamInfo(key, p.layer, p.op, p.role, p.shape, p.trainable)
    return out


def node_name(node: object) -> str:
    """A name for error messages: the model name, or the op's type."""
    return getattr(node, "name", None) or type(node).__name__


def count_parameters(spec: object) -> int:
    """Trainable parameters (what ``sum(p.numel() for p in model.parameters())`` reports)."""
    total = 0
    for p in canonical_params(spec).values():
        if p.trainable:
            n = 1
            for d in p.shape:
                n *= d
            total += n
    return total
