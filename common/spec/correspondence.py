"""Channel correspondence between two architectures that route channels differently but compute the same
function: which permutation of each layer's channels turns one network's weights into the other's.

Two ShuffleNets can differ only in *which* channels meet where: Megvii's V1 shuffles after the depthwise
conv and in the inverse direction, its V2 fuses the shuffle into the next unit's even/odd split. Per-channel
layers (BatchNorm, ReLU, depthwise convs, pools) commute with a permutation, and a conv's output channels can
be reordered freely as long as its groups keep their members; what must agree is, for every channel, where
it comes from and where it goes. So the correspondence is found by following channel *labels* through both
specs, read from the specs themselves (their shuffles, splits, concats, adds and conv groups):

* a conv (not depthwise) or ``Linear`` creates labels ``(its path, j)``; everything else moves labels;
* each label's *signature* is the group of its producing conv and every consumer it meets (a conv or
  classifier with the group it enters, an add with the position it is added at, the network's output);
  weightless producers (adds) and the logits are pinned to their position;
* two labels of corresponding producers may be identified iff their signatures agree. Per producer the
  signatures are matched in order; if any signature's count differs, no correspondence exists (``None``).

Each parametrized leaf pair then gets ``out_perm`` / ``in_perm`` (target channel ``i`` = source channel
``perm[i]``); :func:`map_weights` applies them — pure indexing, bit-exact, and invertible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import singledispatch

import numpy as np

from ..errors import SpecError
from . import ir
from .shuffle import shuffle_permutation

Label = tuple  # (producer path, index)


@dataclass(frozen=True)
class LeafMap:
    """Target leaf ``target`` takes source leaf ``source``'s tensors with output channel ``i`` = source's
    ``out_perm[i]`` and input channel ``p`` = source's ``in_perm[p]`` (None: unchanged)."""

    target: str
    source: str
    node: ir.IRNode
    out_perm: np.ndarray | None
    in_perm: np.ndarray | None


@dataclass(frozen=True)
class Correspondence:
    """Every parametrized leaf of ``target`` mapped from one of ``source`` (in ``state_dict`` order)."""

    source: str
    target: str
    leaves: tuple[LeafMap, ...]

    @property
    def is_identity(self) -> bool:
        """Only renames: no tensor is permuted."""
        return all(m.out_perm is None and m.in_perm is None for m in self.leaves)


# ------------------------------------------------------------------------------------------ tracing
class _Trace:
    """Labels through one spec: what each parametrized leaf reads and writes, and every label's signature."""

    def __init__(self) -> None:
        self.io: dict[str, tuple[list[Label], list[Label]]] = {}
        self.consumers: dict[Label, list[tuple]] = defaultdict(list)
        self.group: dict[Label, int] = {}
        self.pinned: set[str] = set()

    def fresh(self, producer: str, count: int, groups: int = 1, pinned: bool = False) -> list[Label]:
        labels = [(producer, j) for j in range(count)]
        for j, label in enumerate(labels):
            self.group[label] = j // (count // groups)
        if pinned:
            self.pinned.add(producer)
        return labels

    def consume(self, labels: list[Label], consumer: str, groups: int = 1) -> None:
        size = len(labels) // groups
        for p, label in enumerate(labels):
            self.consumers[label].append((consumer, p // size))


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@singledispatch
def _run(node: object, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    raise SpecError(f"{path}: channel correspondence does not know {type(node).__name__} layers")


@_run.register
def _(node: ir.Conv2d, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    if node.is_depthwise and node.depth_multiplier == 1:  # per channel: labels stay
        t.io[path] = (labels, labels)
        return labels
    t.consume(labels, path, node.groups)
    out = t.fresh(path, node.out_channels, node.groups)
    t.io[path] = (labels, out)
    return out


@_run.register
def _(node: ir.BatchNorm2d, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    t.io[path] = (labels, labels)
    return labels


@_run.register(ir.ReLU)
@_run.register(ir.MaxPool2d)
@_run.register(ir.AvgPool2d)
def _(node: object, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    return labels


@_run.register
def _(node: ir.ChannelShuffle, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    return [labels[i] for i in shuffle_permutation(len(labels), node.groups, node.convention)]


@_run.register
def _(node: ir.Linear, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    t.consume(labels, path)
    out = t.fresh(path, node.out_features, pinned=True)  # the logits keep their order
    t.io[path] = (labels, out)
    return out


@_run.register(ir.Sequential)
@_run.register(ir.Stage)
def _(node: object, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    for name, child in node.children():
        labels = _run(child, labels, _path(path, name), t)
    return labels


@_run.register
def _(node: ir.ShuffleV2Block, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    half = len(labels) // 2
    if node.stride == 1:
        split = labels if node.routing == "chunk" else _run(ir.ChannelShuffle(2, "inverse"), labels, path, t)
        out = split[:half] + _run(node.branch2, split[half:], _path(path, "branch2"), t)
    else:
        out = (_run(node.branch1, labels, _path(path, "branch1"), t)
               + _run(node.branch2, labels, _path(path, "branch2"), t))
    return _run(ir.ChannelShuffle(2), out, path, t) if node.routing == "chunk" else out


@_run.register
def _(node: ir.ShuffleV1Block, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    branch = _run(node.branch, labels, _path(path, "branch"), t)
    if node.shortcut is not None:
        return _run(node.shortcut, labels, _path(path, "shortcut"), t) + branch
    added = _path(path, "add")
    for i, (a, b) in enumerate(zip(labels, branch)):
        t.consumers[a].append((added, i))
        t.consumers[b].append((added, i))
    return t.fresh(added, len(labels), pinned=True)  # an add has no weights to absorb a permutation


@_run.register
def _(node: ir.NetworkSpec, labels: list[Label], path: str, t: _Trace) -> list[Label]:
    for name, child in node.children():  # the global mean pool before fc is per channel
        labels = _run(child, labels, _path(path, name), t)
    return labels


def _trace(spec: ir.NetworkSpec) -> _Trace:
    t = _Trace()
    _run(spec, t.fresh("input", spec.in_channels, pinned=True), "", t)
    return t


def _parametrized(spec: ir.NetworkSpec) -> list[tuple[str, ir.IRNode]]:
    return [(path, leaf) for path, leaf in ir.iter_leaves(spec) if isinstance(leaf, ir.IRNode) and leaf.own_params()]


# ----------------------------------------------------------------------------------------- matching
def correspondence(source: ir.NetworkSpec, target: ir.NetworkSpec) -> Correspondence | None:
    """How ``target``'s weights follow from ``source``'s, or None when no channel permutation makes the two
    networks compute the same function (their parametrized layers, in order, must match in kind and shape;
    then every producer's label signatures must match in count)."""
    src_leaves, tgt_leaves = _parametrized(source), _parametrized(target)
    if len(src_leaves) != len(tgt_leaves):
        return None
    for (_, a), (_, b) in zip(src_leaves, tgt_leaves):
        if type(a) is not type(b) or [p[1] for p in a.own_params()] != [p[1] for p in b.own_params()]:
            return None
        if isinstance(a, ir.Conv2d) and (a.groups, a.stride, a.kernel_size) != (b.groups, b.stride, b.kernel_size):
            return None
    to_target = {s: t for (s, _), (t, _) in zip(src_leaves, tgt_leaves)}
    src, tgt = _trace(source), _trace(target)

    def signature(trace: _Trace, label: Label, translate: Mapping[str, str]) -> tuple:
        producer, j = label
        if producer in trace.pinned:
            return ("pinned", j)
        uses = tuple((translate.get(c, c), g) for c, g in trace.consumers[label])
        return (trace.group[label], uses)

    source_of: dict[Label, Label] = {}  # target label -> source label
    if src.pinned - set(to_target) != tgt.pinned - set(to_target.values()):  # adds where the other has none
        return None
    src_labels, tgt_labels = _by_producer(src), _by_producer(tgt)  # convs, fc, adds, the input
    for s_prod in sorted(src_labels):
        t_prod = to_target.get(s_prod, s_prod)
        by_sig: dict[tuple, list[int]] = defaultdict(list)
        for label in src_labels[s_prod]:
            by_sig[signature(src, label, to_target)].append(label[1])
        wanted: dict[tuple, list[int]] = defaultdict(list)
        for label in tgt_labels.get(t_prod, ()):
            wanted[signature(tgt, label, {})].append(label[1])
        if {k: len(v) for k, v in by_sig.items()} != {k: len(v) for k, v in wanted.items()}:
            return None
        for sig, targets in wanted.items():
            for j, k in zip(targets, by_sig[sig]):
                source_of[(t_prod, j)] = (s_prod, k)

    maps = []
    for (s_path, _), (t_path, node) in zip(src_leaves, tgt_leaves):
        (s_in, s_out), (t_in, t_out) = src.io[s_path], tgt.io[t_path]
        perms = []
        for s_list, t_list in ((s_out, t_out), (s_in, t_in)):
            position = {label: k for k, label in enumerate(s_list)}
            try:
                perm = np.array([position[source_of[label]] for label in t_list], dtype=np.int64)
            except KeyError:
                return None
            perms.append(None if np.array_equal(perm, np.arange(len(perm))) else perm)
        maps.append(LeafMap(t_path, s_path, node, *perms))
    return Correspondence(source.name, target.name, tuple(maps))


def _by_producer(trace: _Trace) -> dict[str, list[Label]]:
    """Every producer's labels, in index order (labels are created in order)."""
    out: dict[str, list[Label]] = defaultdict(list)
    for label in trace.group:
        out[label[0]].append(label)
    return out


# ---------------------------------------------------------------------------------------- applying
def _gather_conv(w: np.ndarray, out_perm: np.ndarray | None, in_perm: np.ndarray | None, groups: int) -> np.ndarray:
    """``w'[o, t] = w[out_perm[o], (source input channel of o's t-th input) within its group]``: a grouped
    OIHW (or ``(out, in)``) weight re-indexed; raises if the permutation moves an input across groups."""
    out_ch, per_group = w.shape[:2]
    rows = np.arange(out_ch) if out_perm is None else out_perm
    if in_perm is None and out_perm is None:
        return w
    our_inputs = (np.arange(out_ch) // (out_ch // groups))[:, None] * per_group + np.arange(per_group)[None, :]
    src_inputs = our_inputs if in_perm is None else in_perm[our_inputs]
    cols = src_inputs - (rows // (out_ch // groups))[:, None] * per_group
    if (cols < 0).any() or (cols >= per_group).any():
        raise SpecError("channel correspondence moves a conv input into another group")
    return w[rows[:, None], cols]


def map_leaf(leaf: LeafMap, role: str, value: np.ndarray, inverse: bool = False) -> np.ndarray:
    """One tensor of ``leaf`` mapped source → target (``inverse``: target → source)."""
    out_perm, in_perm = leaf.out_perm, leaf.in_perm
    if inverse:
        out_perm, in_perm = (None if p is None else np.argsort(p) for p in (out_perm, in_perm))
    if role == "num_batches_tracked":
        return value
    if role == "weight" and np.ndim(value) >= 2:
        groups = leaf.node.groups if isinstance(leaf.node, ir.Conv2d) else 1
        return _gather_conv(value, out_perm, in_perm, groups)
    return value if out_perm is None else value[out_perm]


def map_weights(corr: Correspondence, weights: Mapping[str, np.ndarray], inverse: bool = False
                ) -> dict[str, np.ndarray]:
    """Source weights (canonical keys of ``corr.source``) → target weights, in target ``state_dict`` order;
    ``inverse``: target → source. Every value is a permutation of the input's values (bit-exact)."""
    out: dict[str, np.ndarray] = {}
    for leaf in corr.leaves:
        frm, to = (leaf.target, leaf.source) if inverse else (leaf.source, leaf.target)
        for role, _, _ in leaf.node.own_params():
            out[f"{to}.{role}"] = map_leaf(leaf, role, np.asarray(weights[f"{frm}.{role}"]), inverse)
    return out
