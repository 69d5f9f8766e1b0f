"""Why and how a large inference batch runs as micro-batches, for every backend's fast path.

glibc's ``malloc`` serves a request past its mmap threshold (at most 32 MiB on 64-bit) with a fresh
``mmap`` and unmaps it on free, so every page of such a buffer faults in again on every call; a request
within it comes from the heap and is kept for the next call (once one buffer that size was freed, the
threshold rises to it). An XLA executable allocates its working memory as one buffer per call; an op-by-op
runtime (PyTorch, Inductor's code) one buffer per activation. At batch 32 on 224 x 224 both pass the
threshold: Flax ShuffleNet V1 g8 took 58k minor faults and 249-278 ms a call, as eight calls of 4 rows no
faults and 168-184 ms (``docs/performance.md``, fourth round). ONNX Runtime keeps its own arena and has no
such cost, which is why the whole-batch paths lost to it at batch 32 by default and not with
``--malloc reuse``.

So each fast path asks what its largest buffer for a batch would be and, past :data:`MAX_BUFFER_BYTES`,
calls on equal slices that fit (:func:`micro_batch_size`). Rows of an eval-mode network are independent,
so the logits are the same computation; the tests hold the split paths to the oracle like the whole ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

#: The largest buffer one call may allocate before its batch is split: glibc's largest dynamic mmap
#: threshold (32 MiB on 64-bit), less a MiB for the chunk header and page rounding.
MAX_BUFFER_BYTES = 31 * 2**20


def check_max_buffer_bytes(value: object, who: str) -> int | None:
    """``value`` if it is a positive int or None; a clear ValueError otherwise."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{who}: max_buffer_bytes must be a positive int (bytes) or None, got {value!r}")
    return value


def micro_batch_size(batch: int, buffer_bytes: int, max_buffer_bytes: int | None) -> int:
    """Rows per call for a ``batch`` whose largest buffer is ``buffer_bytes``: ``batch`` when that fits
    ``max_buffer_bytes`` (or the limit is None), else the most rows that fit with memory linear in rows —
    rounded down to a divisor of ``batch`` when one is at least half of that (no ragged last call, so no
    second compile) — and never fewer than 1."""
    if max_buffer_bytes is None or buffer_bytes <= max_buffer_bytes or batch <= 1:
        return batch
    fits = max(1, min(batch, int(max_buffer_bytes // math.ceil(buffer_bytes / batch))))
    divisor = max(d for d in range(1, fits + 1) if batch % d == 0)
    return divisor if 2 * divisor >= fits else fits


def call_in_slices(forward: Callable[[Any], Any], x: Any, rows: int,
                   concatenate: Callable[[Sequence[Any]], Any]) -> Any:
    """``forward(x)``, as calls on consecutive slices of ``rows`` rows joined by ``concatenate`` when
    ``rows`` is less than the batch (the last slice may be shorter)."""
    batch = x.shape[0]
    if rows >= batch:
        return forward(x)
    return concatenate([forward(x[i:i + rows]) for i in range(0, batch, rows)])


__all__ = ["MAX_BUFFER_BYTES", "call_in_slices", "check_max_buffer_bytes", "micro_batch_size"]
