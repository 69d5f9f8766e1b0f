"""What XLA's CPU backend runs fast, measured once and shared by every backend that compiles with it
(``flax_impl``, ``keras_impl`` on JAX): framework-free, so the two cannot drift apart.

XLA CPU's convolution is slow when each output sums few products (depthwise: 10-40x; 4- and 8-channel
groups: 2-6x; the 3-channel 3x3 stem). There one fused loop of ``k·k·in/groups`` shifted broadcast
multiply-adds beats it, up to about 72 terms (ResNeXt's 8-channel groups); above that the conv (or one
dense conv per group) wins. The 7x7 3-channel stem (147 terms) stays a conv: as im2col + one matmul it
measured 2x slower on its own (batch 32: 258 vs 134 ms) and no faster inside ResNeXt-50.
"""

from __future__ import annotations

#: Largest ``k·k·in/groups`` computed as shifted multiply-adds (the "taps" formulation).
MAX_TAP_TERMS = 72


def use_taps(kernel_h: int, kernel_w: int, in_per_group: int) -> bool:
    """True where the taps formulation beats XLA CPU's convolution for this kernel (see module doc)."""
    return kernel_h * kernel_w * in_per_group <= MAX_TAP_TERMS
