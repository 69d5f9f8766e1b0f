"""What every benchmark script measures the same way: median wall time and this process's peak RSS."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(max(0, warmup)):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def peak_mb() -> float:
    """This process's own peak RSS (VmHWM). ``ru_maxrss`` survives exec and would report the parent's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Start a new peak-RSS window at the current RSS, after handing freed heap back to the OS.

    A compiler's transient memory (XLA's LLVM codegen, Inductor) is freed after the first call but stays
    in glibc's heap, so VmHWM alone cannot tell compile memory from what inference itself needs.
    ``malloc_trim(0)`` returns the freed pages; writing 5 to ``/proc/self/clear_refs`` resets VmHWM
    (Linux). False, and nothing reset, where either is unavailable.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except (OSError, AttributeError):
        return False
    return True
