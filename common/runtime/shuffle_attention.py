"""Shuffle Attention's channels-last arithmetic (SA-Net's ``sa_layer``), written once for ``flax_impl`` and
``keras_impl``: the caller passes its array namespace (``jax.numpy`` or ``keras.ops``), as for
:mod:`common.runtime.xla_conv`, and the operations the two spell differently (the mean over H × W, the
sigmoid, the reciprocal square root) as functions.

The channels are viewed as ``(groups, 2, C/2G)`` — consecutive channels per group, first half then second:
the channels NCHW's ``reshape(b·G, C/G, h, w)`` folds into the batch — so the groups never move into the
batch. GroupNorm with one channel per group is normalised here, two-pass (mean of squared deviations;
``E[x²] − E[x]²`` cancels in float32), with the caller's epsilon. The 2-group channel shuffle that ends the
layer is left to the caller's ``channel_shuffle``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .xla_conv import Array

#: ``f(x)`` in the caller's framework, elementwise (sigmoid, rsqrt) or the mean over axes (1, 2) kept.
Unary = Callable[[Array], Array]


def gated_halves(xp: Any, x: Array, lead: Sequence[Any], channels: int, groups: int, params: Sequence[Array],
                 eps: Array, mean_hw: Unary, sigmoid: Unary, rsqrt: Unary) -> Array:
    """Both branches on NHWC ``x`` (leading dims ``lead`` = N, H, W, static or not), put back in place.

    ``params``: the ``(C/2G,)`` vectors ``cweight, cbias, sweight, sbias, gamma, beta`` in ``x``'s dtype.
    Returns ``(N, H, W, C)`` before the shuffle.
    """
    cweight, cbias, sweight, sbias, gamma, beta = params
    view = xp.reshape(x, (*lead, groups, 2, channels // (2 * groups)))
    first, second = view[..., 0, :], view[..., 1, :]  # (N, H, W, groups, C/2G) each
    channel = first * sigmoid(cweight * mean_hw(first) + cbias)
    centred = second - mean_hw(second)
    normed = centred * rsqrt(mean_hw(xp.square(centred)) + eps) * gamma + beta  # biased, two-pass
    spatial = second * sigmoid(sweight * normed + sbias)
    return xp.reshape(xp.stack([channel, spatial], axis=-2), (*lead, channels))
