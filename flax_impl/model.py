"""Whole networks, and ``build`` / ``create_model`` for any IR node."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.spec import ir
from common.spec.registry import get_spec

from .blocks import Container, build_node
from .layers import build_leaf, resolve_dtype
from .weights import load_weights


class Network(Container):
    """``stem → stages → head → mean over H, W → fc`` (NHWC in, logits out).

    Children are the spec's top-level torchvision names (``conv1``, ``maxpool``, ``stage2`` / ``layer1``,
    ``conv5``, ``fc`` ...). ``model(x)`` returns logits; ``model(x, taps=True)`` returns the diagnostic taps
    of ``spec.stage_names``: ``stem`` (after the max-pool), each stage, ``pre_logits`` (pooled, ``(N, C)``)
    and ``logits``.
    """

    def __init__(self, spec: ir.NetworkSpec, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
        super().__init__(spec, dtype=dtype, rngs=rngs)
        self.stem_names = tuple(name for name, _ in spec.stem)
        self.stage_names = tuple(stage.name for stage in spec.stages)
        self.head_names = tuple(name for name, _ in spec.head)
        # Set by flax_impl.freeze_backbone: only ``fc`` trains (see flax_impl.transfer.trainable_filter)
        self.backbone_frozen = False

    def __call__(self, x: jax.Array, taps: bool = False, *,
                 apply: Callable[[nnx.Module, jax.Array], jax.Array] | None = None
                 ) -> jax.Array | dict[str, jax.Array]:
        """Logits, or every tap with ``taps=True``. ``apply(module, x)`` (default ``module(x)``) runs each
        stem layer, each block of each stage, each head layer and ``fc``: ``flax_impl.bridge`` passes a
        jitted call, so a stage's identical blocks share one compiled executable."""
        spec = self.spec
        if x.ndim != 4 or x.shape[-1] != spec.in_channels:
            raise ValueError(f"{spec.name} expects NHWC input with {spec.in_channels} channels, "
                             f"got shape {tuple(x.shape)}")
        apply = apply if apply is not None else (lambda module, h: module(h))
        x = jnp.asarray(x, self.dtype)
        out: dict[str, jax.Array] = {}
        for name in self.stem_names:
            x = apply(getattr(self, name), x)
        out["stem"] = x
        for name in self.stage_names:
            for _, block in getattr(self, name).named_children():
                x = apply(block, x)
            out[name] = x
        for name in self.head_names:
            x = apply(getattr(self, name), x)
        x = jnp.mean(x, axis=(1, 2))  # global average pool over H, W
        out["pre_logits"] = x
        out["logits"] = apply(self.fc, x)
        return out if taps else out["logits"]

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every tap of ``spec.stage_names`` (same as ``model(x, taps=True)``)."""
        return self(x, taps=True)

    def pre_logits(self, x: jax.Array) -> jax.Array:
        """The pooled ``(N, num_features)`` feature vector the classifier sees."""
        return self(x, taps=True)["pre_logits"]

    def reset_classifier(self, num_classes: int, rngs: nnx.Rngs | None = None) -> None:
        """Replace ``fc`` by a fresh ``num_classes``-way layer (and ``spec`` with it), for fine-tuning.
        The new layer is trainable; a frozen backbone stays frozen. ``rngs`` defaults to ``nnx.Rngs(0)``."""
        spec = get_spec(self.spec, num_classes)
        self.fc = build_leaf(spec.fc, dtype=self.dtype, rngs=rngs if rngs is not None else nnx.Rngs(0))
        self.spec = spec


def build(node: object, dtype: Any = "float32", rngs: nnx.Rngs | None = None, *,
          weights: Mapping[str, np.ndarray] | None = None) -> nnx.Module:
    """A Flax NNX module for any IR node: a leaf op, ``Sequential``, block, ``Stage`` or ``NetworkSpec``.

    ``dtype`` ``"float64"`` enables ``jax_enable_x64`` process-wide (see :func:`layers.resolve_dtype`).
    ``rngs`` defaults to ``nnx.Rngs(0)``, so building is reproducible. ``weights`` (canonical names):
    loaded strictly — a mismatch raises and no module is returned.
    """
    if weights is not None:
        module = build(node, dtype, rngs)
        load_weights(module, weights)
        return module
    dtype = resolve_dtype(dtype)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    if isinstance(node, ir.NetworkSpec):
        return Network(node, dtype=dtype, rngs=rngs)
    return build_node(node, dtype=dtype, rngs=rngs)


def create_model(name: str | ir.NetworkSpec, num_classes: int | None = None, dtype: Any = "float32",
                 rngs: nnx.Rngs | None = None) -> Network:
    """``build(get_spec(name, num_classes))``: a registered model name or a custom ``NetworkSpec``
    (``num_classes=None``: 1000 for a name, the spec's own for a spec, as :func:`common.get_spec`)."""
    return build(get_spec(name, num_classes), dtype=dtype, rngs=rngs)


__all__ = ["Network", "build", "create_model"]
