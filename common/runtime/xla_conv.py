"""The fast XLA CPU conv formulations (:mod:`common.runtime.xla_cpu` says which one runs where), written once
for ``flax_impl`` and ``keras_impl``: NHWC input, HWIO kernels, VALID convs without dilation.

Framework-free: every function takes the array namespace ``xp`` — ``jax.numpy`` (Flax) or ``keras.ops``
(Keras on TensorFlow, JAX and torch) — and uses only what both spell the same way (``shape``, ``reshape``,
``transpose``, ``pad``, ``split``, ``concatenate`` and the tensors' own slicing). The products they spell
differently (Flax's ``dot_general`` / ``conv_general_dilated`` at full precision, Keras's ``ops.matmul`` /
``ops.conv``) are passed in as functions.

Every formulation is the same sum of products as the plain conv in another order; the callers' table (in
``keras_impl.layers``) and :func:`flax_impl.layers.conv_path` give the measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

#: An array of the caller's framework (a ``jax.Array``, a TF / torch tensor); opaque here.
Array = Any
#: ``product(a, b)`` in the caller's framework: the batched matmul, or one group's dense conv / matmul.
Product = Callable[[Array, Array], Array]


class Namespace(Protocol):
    """The array operations used here, spelled alike by ``jax.numpy`` and ``keras.ops``."""

    def shape(self, x: Array, /) -> tuple: ...
    def reshape(self, x: Array, shape: tuple, /) -> Array: ...
    def transpose(self, x: Array, axes: tuple[int, ...], /) -> Array: ...
    def pad(self, x: Array, pad_width: tuple, /) -> Array: ...
    def split(self, x: Array, sections: int, /, axis: int = ...) -> list[Array]: ...
    def concatenate(self, xs: list[Array], /, axis: int = ...) -> Array: ...


def subsample(x: Array, strides: tuple[int, int]) -> Array:
    """The input a strided 1x1 conv reads: every ``stride``-th row and column."""
    return x if tuple(strides) == (1, 1) else x[:, ::strides[0], ::strides[1], :]


def windows(xp: Namespace, x: Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
            pad: int = 0, fill: float = 0.0) -> Iterator[tuple[int, int, Array]]:
    """``(i, j, window)`` for every kernel tap of a VALID conv or pool on ``x`` padded by ``pad`` (with
    ``fill``): the values tap ``(i, j)`` meets, ``x[:, i::sh, j::sw]`` cut to the output size, taps
    row-major. The spatial axes are 1 and 2: NHWC, and the channel-major graph's ``(C, H, W, N)``.

    With static spatial dims ``x`` is first reshaped into stride² phases (at stride 1 too), so each window
    is a contiguous slice of one array: XLA runs strided slices about 1.5x slower, and bare slices let it
    fuse the producer of ``x`` into every window and recompute it (ResNeXt stage 1: 56 → 147 ms). Dynamic
    dims (TensorFlow traces) take strided slices (:func:`window`)."""
    if pad:
        x = xp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    (kh, kw), (sh, sw) = kernel_hw, strides
    _, h, w, c = x.shape
    if h is None or w is None:
        for i in range(kh):
            for j in range(kw):
                yield i, j, window(x, i, j, kernel_hw, strides)
        return
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"Conv2d: padded input {h}x{w} is smaller than the {kh}x{kw} kernel")
    hp, wp = -(-h // sh) * sh, -(-w // sw) * sw  # round up to whole phases
    if (hp, wp) != (h, w):
        x = xp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), constant_values=fill)
    phases = xp.reshape(x, (-1, hp // sh, sh, wp // sw, sw, c))
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i // sh, j // sw
            yield i, j, phases[:, y0:y0 + ho, i % sh, x0:x0 + wo, j % sw, :]


def window(x: Array, i: int, j: int, kernel_hw: tuple[int, int], strides: tuple[int, int]) -> Array:
    """Tap ``(i, j)``'s window as one strided slice. Negative stops, so it works on dynamic (None) dims."""
    (kh, kw), (sh, sw) = kernel_hw, strides
    return x[:, i:(i - (kh - 1)) or None:sh, j:(j - (kw - 1)) or None:sw, :]


def taps_sum(xp: Namespace, x: Array, kernel: Array, groups: int, strides: tuple[int, int],
             pad: int = 0) -> Array:
    """A grouped conv as ``Σ_taps Σ_c window[..., g, c] · kernel[i, j, c, g, :]`` (``c``: input channel within
    group ``g``): k·k·in/groups broadcast multiply-adds that XLA fuses into one loop, faster than its conv
    where each output sums few products. Depthwise is ``in/groups == 1`` with the channel multiplier last
    (output channel ``c·mult + m``, PyTorch's order). Dims may be dynamic (TF + XLA traces), as in
    :func:`windows`."""
    kh, kw, per_in, out = kernel.shape
    kernel = xp.reshape(kernel, (kh, kw, per_in, groups, out // groups))
    acc = None
    for i, j, win in windows(xp, x, (kh, kw), strides, pad):
        lead = tuple(xp.shape(win)[:3])
        win = xp.reshape(win, (*lead, groups, per_in))
        for c in range(per_in):
            term = win[..., c:c + 1] * kernel[i, j, c]
            acc = term if acc is None else acc + term
    return xp.reshape(acc, (*lead, out))


def grouped_matmul(xp: Namespace, x: Array, kernel: Array, groups: int, matmul: Product) -> Array:
    """A grouped 1x1 conv of NHWC ``x`` (static dims; ``kernel`` ``(in/groups, out)``) as one matmul batched
    over the groups: ``(groups, rows, in/g) @ (groups, in/g, out/g)`` by ``matmul``, transposed back.

    The same dot products as one matmul per group, without a slice per group, which XLA compiles as a
    kernel of its own: ShuffleNet V1 g8's first call 3x cheaper, and faster to run (figures at
    :func:`flax_impl.layers.conv_grouped_matmul`)."""
    _, h, w, c = x.shape
    per_in, out = c // groups, kernel.shape[-1]
    rows = xp.transpose(xp.reshape(x, (-1, groups, per_in)), (1, 0, 2))
    weights = xp.transpose(xp.reshape(kernel, (per_in, groups, out // groups)), (1, 0, 2))
    return xp.reshape(xp.transpose(matmul(rows, weights), (1, 0, 2)), (-1, h, w, out))


def per_group(xp: Namespace, x: Array, kernel: Array, groups: int, dense: Product) -> Array:
    """A grouped conv as ``dense(x_slice, kernel_slice)`` per group, concatenated on channels: the kernel's
    output channels (last axis) are group-major, as the input's. Where XLA CPU's grouped conv is slow
    (3-7x) and per-group dense products are library kernels (float32, ``xla_cpu.split_groups``)."""
    xs = xp.split(x, groups, axis=-1)
    ks = xp.split(kernel, groups, axis=-1)
    return xp.concatenate([dense(a, b) for a, b in zip(xs, ks)], axis=-1)
