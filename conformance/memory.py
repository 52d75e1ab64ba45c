"""Peak-memory probes (SPEC ATT-10, GRAD-2, KD-7) and the log-log slope fit.

On CUDA the probe is the allocator's peak counter. On the CPU it is ``tracemalloc`` (NumPy reports its
allocations to it) together with the process's resident-set high-water mark, reset through
``/proc/self/clear_refs`` where Linux allows it (that one also sees torch and Triton-interpreter buffers).
The peak is the largest allocation during the call beyond what existed before it.
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _hwm_bytes(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Peak:
    """A measured peak: ``bytes`` beyond the starting point, and the probes that saw it."""

    bytes: int
    probe: str


def peak_extra(fn: Callable[[], object], device: str) -> tuple[object, Peak]:
    """Run ``fn`` and return its result with the peak extra memory it allocated on ``device``."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        return result, Peak(torch.cuda.max_memory_allocated() - before, "cuda allocator peak")
    use_rss = _reset_hwm()
    rss_before = _hwm_bytes("VmRSS") if use_rss else None
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    try:
        result = fn()
        traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
    finally:
        tracemalloc.stop()
    rss_peak = (_hwm_bytes("VmHWM") or 0) - rss_before if rss_before is not None else 0
    probes = "tracemalloc" + (" + resident-set high-water mark" if rss_before is not None else "")
    return result, Peak(max(traced_peak, rss_peak, 0), probes)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (1 for linear growth, 2 for quadratic)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("need at least two points of equal count")
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1.0)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den
