"""IR containers → Flax NNX modules: ``Sequential``, the three block kinds and ``Stage``.

Naming: every child is stored as an attribute with its canonical name via ``setattr`` (``"0"``, ``"1"``
for sequential children; ``branch1`` / ``conv1`` / ``downsample`` ... for blocks). NNX then uses those
strings as state-path elements, so ``".".join(path)`` of every array is exactly
``"{canonical layer path}.{flax param}"`` (e.g. ``stage2.0.branch2.3.kernel``). We deliberately do not use
``nnx.List`` / ``nnx.Sequential``: they would add an extra ``layers`` level and integer path elements.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.errors import SpecError
from common.spec import ir

from .layers import (BatchNorm2d, Conv2d, build_leaf, channel_shuffle, channel_split, check_conv_impl, conv_bn,
                     resolve_dtype)


class Container(nnx.Module):
    """A module whose children are the IR node's named children, as attributes of the same names."""

    def __init__(self, node: Any, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
        self.spec = node
        self.dtype = resolve_dtype(dtype)
        named = ir.children_of(node)
        self.child_names = tuple(name for name, _ in named)
        for name, child in named:
            setattr(self, name, build_node(child, dtype=self.dtype, rngs=rngs))

    def named_children(self) -> Iterator[tuple[str, nnx.Module]]:
        for name in self.child_names:
            yield name, getattr(self, name)

    def __getitem__(self, key: int | str) -> nnx.Module:
        """``seq[0]`` / ``block["branch2"]``, like indexing a torch container."""
        return getattr(self, str(key))

    def __len__(self) -> int:
        return len(self.child_names)


class Sequential(Container):
    """Children ``"0", "1", ...`` applied in order (``torch.nn.Sequential``)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        layers = [layer for _, layer in self.named_children()]
        i = 0
        while i < len(layers):
            if i + 1 < len(layers) and isinstance(layers[i], Conv2d) and isinstance(layers[i + 1], BatchNorm2d):
                x = conv_bn(layers[i], layers[i + 1], x)  # conv → BN: folded in eval mode (see conv_bn)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x


class Stage(Sequential):
    """A named run of blocks; blocks are children ``"0", "1", ...`` applied in order."""


class ShuffleV2Block(Container):
    """torchvision ``InvertedResidual``.

    stride 1: ``x1, x2 = split(x)``; ``cat(x1, branch2(x2))``. stride 2: ``cat(branch1(x), branch2(x))``.
    Then ``channel_shuffle(·, 2)`` in the paper direction. Megvii's routing (``routing="even_odd"``) splits
    even / odd channels instead and does not shuffle the concat (:class:`common.spec.ir.ShuffleV2Block`).
    """

    def __init__(self, node: ir.ShuffleV2Block, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
        if (node.stride == 1) != (node.branch1 is None):
            raise SpecError(f"ShuffleV2Block: stride {node.stride} needs branch1 "
                            f"{'absent' if node.stride == 1 else 'present'}")
        super().__init__(node, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        even_odd = self.spec.routing == "even_odd"
        if self.spec.stride == 1:
            # Megvii's routing: even channels pass, odd ones enter the branch (the inverse 2-group shuffle)
            x1, x2 = channel_split(channel_shuffle(x, 2, "inverse") if even_odd else x, 2)
            out = jnp.concatenate([x1, self.branch2(x2)], axis=-1)
        else:
            out = jnp.concatenate([self.branch1(x), self.branch2(x)], axis=-1)
        return out if even_odd else channel_shuffle(out, 2, "paper")


class ShuffleV1Block(Container):
    """ShuffleNet V1 unit: stride 1 ``relu(x + branch(x))``; stride 2 ``relu(cat(shortcut(x), branch(x)))``
    (shortcut first, as Megvii's reference code concatenates)."""

    def __init__(self, node: ir.ShuffleV1Block, *, dtype: Any = "float32", rngs: nnx.Rngs) -> None:
        if (node.stride == 1) != (node.shortcut is None):
            raise SpecError(f"ShuffleV1Block: stride {node.stride} needs the avg-pool shortcut "
                            f"{'absent' if node.stride == 1 else 'present'}")
        super().__init__(node, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.spec.stride == 1:
            return jax.nn.relu(x + self.branch(x))
        return jax.nn.relu(jnp.concatenate([self.shortcut(x), self.branch(x)], axis=-1))


class Bottleneck(Container):
    """torchvision ResNet ``Bottleneck``: ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1 x))))))) + id)``,
    ``id = downsample(x)`` when present; with ``sa`` (SA-Net's ``SABottleneck``) ``relu(sa(bn3(...)) + id)``."""

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = self.downsample(x) if self.spec.downsample is not None else x
        out = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        out = jax.nn.relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, out)
        if self.spec.sa is not None:
            out = self.sa(out)
        return jax.nn.relu(out + identity)


def iter_modules(module: nnx.Module) -> Iterator[nnx.Module]:
    """Every module of a flax_impl tree, via the containers' own child lists (cheap: no graph traversal)."""
    yield module
    if isinstance(module, Container):
        for _, child in module.named_children():
            yield from iter_modules(child)


def set_conv_impl(model: nnx.Module, impl: str = "auto") -> nnx.Module:
    """Switch every ``Conv2d`` of ``model`` to ``impl``: ``"auto"`` (per-shape fast paths, see
    :func:`~flax_impl.layers.conv_path`, with eval-mode BatchNorm folded where that pays) or ``"lax"`` (plain
    ``lax.conv`` and BatchNorm, as before), e.g. to compare the two. Parameters are untouched; a jitted
    call retraces (``impl`` is static graph data). Returns ``model``."""
    check_conv_impl(impl)
    for module in iter_modules(model):
        if isinstance(module, Conv2d):
            module.impl = impl
    return model


CONTAINER_MODULES: dict[type, type[Container]] = {
    ir.Sequential: Sequential, ir.Stage: Stage, ir.ShuffleV2Block: ShuffleV2Block,
    ir.ShuffleV1Block: ShuffleV1Block, ir.Bottleneck: Bottleneck,
}


def build_node(node: object, dtype: Any = "float32", rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The module for any IR node below a network: a leaf op, a ``Sequential``, a block or a ``Stage``."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    cls = CONTAINER_MODULES.get(type(node))
    if cls is not None:
        return cls(node, dtype=dtype, rngs=rngs)
    return build_leaf(node, dtype=dtype, rngs=rngs)
