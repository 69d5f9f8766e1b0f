"""What XLA's CPU backend runs fast, measured once and shared by every backend that compiles with it
(``flax_impl``, ``keras_impl`` on JAX and TF + XLA): framework-free, so the two cannot drift apart.

XLA CPU's convolution is slow when each output sums few products (depthwise: 10-40x; 4- and 8-channel
groups: 2-6x; the 3-channel 3x3 stem). There one fused loop of ``k·k·in/groups`` shifted broadcast
multiply-adds beats it, up to about 72 terms (ResNeXt's 8-channel groups); above that the conv (or one
dense conv per group) wins. The 7x7 3-channel stem (147 terms) stays a conv: as im2col + one matmul it
measured 2x slower on its own (batch 32: 258 vs 134 ms) and no faster inside ResNeXt-50.

Float64 is different: XLA CPU has library kernels (Eigen / oneDNN) for float32 convs and matmuls only, and
generates a loop nest for every float64 conv or matmul, 20-40 ms of LLVM compile each. Splitting a grouped
conv into one op per group then multiplies its compile time by the group count for little run time
(measured 2026-12-02, Flax, batch 2 at 64x64 / batch 8 at 224x224, compile then run):

| float64 model     | per-group ops            | one grouped conv         |
|-------------------|--------------------------|--------------------------|
| ResNeXt-50        | 11.3 s, 50 ms / 8.4 s, 1437 ms | 1.6 s, 41 ms / 1.4 s, 1544 ms |
| ResNeXt-101 64x4d | 49.7 s, 172 ms (64x64)   | 2.3 s, 156 ms            |
| V1 g8 1.0x        | 5.9 s, 8 ms / 6.3 s, 208 ms    | 0.9 s, 6 ms / 1.1 s, 225 ms   |
| V1 g3 1.0x (224)  | 3.0 s, 140 ms            | 1.2 s, 177 ms            |

Float64 is the verification dtype, where the first call (compile + run) is what a user waits for, so in
float64 a grouped conv that float32 splits is one XLA conv. The taps formulation stays in both dtypes
(it is one fused loop either way).
"""

from __future__ import annotations

import numpy as np

#: Largest ``k·k·in/groups`` computed as shifted multiply-adds (the "taps" formulation).
MAX_TAP_TERMS = 72


def use_taps(kernel_h: int, kernel_w: int, in_per_group: int) -> bool:
    """True where the taps formulation beats XLA CPU's convolution for this kernel (see module doc)."""
    return kernel_h * kernel_w * in_per_group <= MAX_TAP_TERMS


def split_groups(dtype: object) -> bool:
    """True where a grouped conv (not computed as taps) runs as dense per-group products — one matmul
    batched over the groups for 1x1, one conv per group otherwise: float32, whose products are library
    kernels; False for float64, where each would be compiled code (module doc).
    ``dtype``: a dtype name (``"float64"``, as Keras gives it) or a NumPy / JAX dtype."""
    return np.dtype(dtype) != np.float64
