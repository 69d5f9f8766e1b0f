"""Channel shuffle as an index permutation, in both directions found in the wild.

``out[:, i] = x[:, perm[i]]`` with ``perm = shuffle_permutation(C, g, convention)``:

* ``"paper"`` — ShuffleNet paper, torchvision, SA-Net: view channels as ``(g, C/g)``, transpose, flatten.
  C=12, g=3 → ``[0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]``. Every groupnets network uses this one.
* ``"inverse"`` — Megvii's official ShuffleNet V1 code and some Keras write-ups: view as ``(C/g, g)``,
  transpose, flatten → ``[0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]``, the inverse permutation.
  The two agree only when ``C == g**2`` (or g is 1 or C).

Channels-last (NHWC) equivalent of ``"paper"``: reshape ``(N, H, W, g, C/g)``, swap the last two axes,
flatten; of ``"inverse"``: reshape ``(N, H, W, C/g, g)``, swap, flatten.
"""

from __future__ import annotations

import numpy as np

from ..errors import SpecError

CONVENTIONS = ("paper", "inverse")


def check_shuffle(channels: int, groups: int, convention: str = "paper") -> None:
    if convention not in CONVENTIONS:
        raise SpecError(f"unknown shuffle convention {convention!r}; use one of {CONVENTIONS}")
    if groups < 1 or channels % groups:
        raise SpecError(f"channel shuffle: {channels} channels are not divisible by groups={groups}")


def shuffle_view(channels: int, groups: int, convention: str = "paper") -> tuple[int, int]:
    """The ``(a, b)`` the channel axis is viewed as before the transpose."""
    check_shuffle(channels, groups, convention)
    return (groups, channels // groups) if convention == "paper" else (channels // groups, groups)


def shuffle_permutation(channels: int, groups: int, convention: str = "paper") -> np.ndarray:
    a, b = shuffle_view(channels, groups, convention)
    return np.arange(channels).reshape(a, b).T.reshape(-1)
