"""The porting table: canonical (PyTorch / torchvision) weights ⇄ each framework's own names and layouts.

Every framework names a layer by its canonical dotted path (``stage2.0.branch2.3``); only the
parameter's own name and the array layout differ. So porting is one declarative table keyed by
``(layer kind, canonical role)`` → ``(framework parameter name, layout)``, applied by two generic
functions. A backend's ``export_weights`` / ``load_weights`` only read and write
``"{layer}.{framework_param}"`` arrays; strictness, shapes and layouts are decided here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import WeightsMismatchError
from ..spec.ir import BatchNorm2d, Conv2d, Linear, ShuffleAttention
from ..spec.params import ParamInfo, canonical_params, node_name

Framework = Literal["torch", "keras", "flax"]
FRAMEWORKS: tuple[Framework, ...] = ("torch", "keras", "flax")
LayerKind = Literal["conv", "depthwise", "bn", "linear", "shuffle_attention"]


@dataclass(frozen=True)
class Layout:
    """An array layout change and its exact inverse (pure transposes/reshapes: bit-exact both ways)."""

    name: str
    to_framework: Callable[[np.ndarray, object], np.ndarray]
    to_canonical: Callable[[np.ndarray, object], np.ndarray]


def _depthwise_to_hwcm(w: np.ndarray, op: Conv2d) -> np.ndarray:
    # (C·m, 1, kh, kw) with output channel c·m + j  →  Keras DepthwiseConv2D (kh, kw, C, m)
    c, m = op.in_channels, op.depth_multiplier
    return w.reshape(c, m, *w.shape[2:]).transpose(2, 3, 0, 1)


def _depthwise_from_hwcm(w: np.ndarray, op: Conv2d) -> np.ndarray:
    kh, kw, c, m = w.shape
    return w.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)


SAME = Layout("same", lambda w, op: w, lambda w, op: w)
OIHW_TO_HWIO = Layout("OIHW->HWIO", lambda w, op: w.transpose(2, 3, 1, 0), lambda w, op: w.transpose(3, 2, 0, 1))
OIHW_TO_HWCM = Layout("OIHW->HW,C,mult", _depthwise_to_hwcm, _depthwise_from_hwcm)
OUT_IN_TO_IN_OUT = Layout("(out,in)->(in,out)", lambda w, op: w.T, lambda w, op: w.T)
#: SA-Net's gate parameters ``(1, C, 1, 1)`` (broadcast over NCHW) ⇄ a channels-last vector ``(C,)``
GATE_TO_VECTOR = Layout("(1,C,1,1)->(C,)", lambda w, op: w.reshape(-1), lambda w, op: w.reshape(1, -1, 1, 1))
_GATES = ("cweight", "cbias", "sweight", "sbias")

_BN_KERAS = {"weight": ("gamma", SAME), "bias": ("beta", SAME), "running_mean": ("moving_mean", SAME),
             "running_var": ("moving_variance", SAME), "num_batches_tracked": ("num_batches_tracked", SAME)}
_BN_FLAX = {"weight": ("scale", SAME), "bias": ("bias", SAME), "running_mean": ("mean", SAME),
            "running_var": ("var", SAME), "num_batches_tracked": ("num_batches_tracked", SAME)}

#: (layer kind, canonical role) → (framework parameter name, layout), per framework.
PORTING_TABLE: dict[Framework, dict[tuple[LayerKind, str], tuple[str, Layout]]] = {
    "keras": {
        ("conv", "weight"): ("kernel", OIHW_TO_HWIO),  # Conv2D(groups=g): (kh, kw, in/g, out)
        ("conv", "bias"): ("bias", SAME),
        ("depthwise", "weight"): ("kernel", OIHW_TO_HWCM),  # DepthwiseConv2D: (kh, kw, C, mult)
        ("depthwise", "bias"): ("bias", SAME),
        **{("bn", role): v for role, v in _BN_KERAS.items()},
        ("linear", "weight"): ("kernel", OUT_IN_TO_IN_OUT),
        ("linear", "bias"): ("bias", SAME),
        **{("shuffle_attention", role): (role, GATE_TO_VECTOR) for role in _GATES},
        ("shuffle_attention", "gn.weight"): ("gamma", SAME),  # keras.layers.GroupNormalization's names
        ("shuffle_attention", "gn.bias"): ("beta", SAME),
    },
    "flax": {
        ("conv", "weight"): ("kernel", OIHW_TO_HWIO),  # nnx.Conv(feature_group_count=g): (kh, kw, in/g, out)
        ("conv", "bias"): ("bias", SAME),
        ("depthwise", "weight"): ("kernel", OIHW_TO_HWIO),  # feature_group_count=C: (kh, kw, 1, C·mult)
        ("depthwise", "bias"): ("bias", SAME),
        **{("bn", role): v for role, v in _BN_FLAX.items()},
        ("linear", "weight"): ("kernel", OUT_IN_TO_IN_OUT),
        ("linear", "bias"): ("bias", SAME),
        **{("shuffle_attention", role): (role, GATE_TO_VECTOR) for role in _GATES},
        ("shuffle_attention", "gn.weight"): ("gn.scale", SAME),  # an nnx.GroupNorm named ``gn``
        ("shuffle_attention", "gn.bias"): ("gn.bias", SAME),
    },
}


def layer_kind(op: object) -> LayerKind:
    if isinstance(op, Conv2d):
        return "depthwise" if op.is_depthwise else "conv"
    if isinstance(op, BatchNorm2d):
        return "bn"
    if isinstance(op, Linear):
        return "linear"
    if isinstance(op, ShuffleAttention):
        return "shuffle_attention"
    raise TypeError(f"{type(op).__name__} has no weights")


def _rule(framework: Framework, param: ParamInfo) -> tuple[str, Layout]:
    if framework == "torch":
        return param.role, SAME
    return PORTING_TABLE[framework][(layer_kind(param.op), param.role)]


def framework_key(framework: Framework, param: ParamInfo) -> str:
    """``"{layer}.{framework_param}"``; just the parameter name for a bare primitive (empty layer path)."""
    name = _rule(framework, param)[0]
    return f"{param.layer}.{name}" if param.layer else name


def framework_shapes(spec: object, framework: Framework) -> dict[str, tuple[int, ...]]:
    """Every framework key of ``spec`` → the array shape that framework stores."""
    out = {}
    for param in canonical_params(spec).values():
        name, layout = _rule(framework, param)
        probe = np.empty(param.shape, dtype=np.uint8)
        out[framework_key(framework, param)] = layout.to_framework(probe, param.op).shape
    return out


@dataclass(frozen=True)
class LoadReport:
    """What a non-strict load skipped (like PyTorch's ``_IncompatibleKeys``)."""

    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()


def check_weights(spec: object, weights: Mapping[str, np.ndarray], strict: bool = True,
                  source: str | None = None) -> LoadReport:
    """Validate canonical ``weights`` against ``spec``; raise one :class:`WeightsMismatchError` listing
    every problem. Wrong shapes and dtypes always fail; missing / unexpected keys fail when ``strict``."""
    expected = canonical_params(spec)
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong_shape, wrong_dtype = [], []
    for key, value in weights.items():
        param = expected.get(key)
        if param is None:
            continue
        shape = tuple(np.shape(value))
        if shape != param.shape:
            wrong_shape.append((key, param.shape, shape))
        kind = np.asarray(value).dtype.kind
        if param.is_integer and kind not in "iu":
            wrong_dtype.append((key, "an integer type", str(np.asarray(value).dtype)))
        elif not param.is_integer and kind != "f":
            wrong_dtype.append((key, "a floating type", str(np.asarray(value).dtype)))
    if wrong_shape or wrong_dtype or (strict and (missing or unexpected)):
        raise WeightsMismatchError(node_name(spec), missing if strict else (), unexpected if strict else (),
                                   wrong_shape, wrong_dtype, source)
    return LoadReport(tuple(missing), tuple(unexpected))


def to_framework(spec: object, framework: Framework, weights: Mapping[str, np.ndarray],
                 strict: bool = True, source: str | None = None) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Canonical → framework-named, framework-laid-out arrays (only keys present in ``weights``)."""
    report = check_weights(spec, weights, strict, source)
    out = {}
    for key, param in canonical_params(spec).items():
        if key in weights:
            _, layout = _rule(framework, param)
            out[framework_key(framework, param)] = layout.to_framework(np.asarray(weights[key]), param.op)
    return out, report


def to_canonical(spec: object, framework: Framework,
                 framework_weights: Mapping[str, np.ndarray], partial: bool = False) -> dict[str, np.ndarray]:
    """Framework-named arrays (a backend's raw export) → canonical weights, in ``state_dict`` order.

    Raises :class:`WeightsMismatchError` (in framework names) if the export does not cover the spec
    exactly — that would be a backend bug, never silently papered over. ``partial=True`` allows a
    subset (e.g. gradients, which exist only for trainable parameters); unknown keys still fail.
    """
    params = canonical_params(spec)
    by_fw_key = {framework_key(framework, p): p for p in params.values()}
    if partial:
        by_fw_key = {k: p for k, p in by_fw_key.items() if k in framework_weights}
    missing = [k for k in by_fw_key if k not in framework_weights]
    unexpected = [k for k in framework_weights if k not in by_fw_key]
    if missing or unexpected:
        raise WeightsMismatchError(node_name(spec), missing, unexpected, source=f"a {framework} model")
    out = {}
    for fw_key, param in by_fw_key.items():
        _, layout = _rule(framework, param)
        out[param.key] = np.require(layout.to_canonical(np.asarray(framework_weights[fw_key]), param.op), requirements="C")
    return out


def without_head(weights: Mapping[str, np.ndarray], head: str = "fc") -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Transfer learning: ``weights`` minus the classifier (``fc.*``) and the keys removed.

    Load the result with ``load_weights(model, backbone, strict=False)`` into a model with another
    ``num_classes``: the report's ``missing_keys`` are then exactly the fresh head's keys.
    """
    removed = tuple(k for k in weights if k.split(".", 1)[0] == head)
    return {k: v for k, v in weights.items() if k not in removed}, removed


def running_statistics(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The BatchNorm running statistics and counters among canonical ``weights`` (what a train step's
    forward updates)."""
    return {k: v for k, v in weights.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
