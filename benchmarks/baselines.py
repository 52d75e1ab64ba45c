"""The baselines speed-ups are measured against, read from the benchmark operations' definitions.

Each benchmark operation names its baseline backend per device (``BenchOp.baselines``, in its operation's
module): a registered backend (``torch-flash``, ``reference``, ``torch``) or a yardstick, a vendor-library
formulation the benchmarks gate and time like a backend though it is no kernel under test
(``torch-compile``, ``torch.sum``, ``torch-eager``). Its reference rows (``BenchOp.reference_rows``) are the
backends each record is also set beside (compiled FlexAttention and SDPA cuDNN beside every GPU attention row).
"""

from __future__ import annotations

from implementations.base import BackendLike
from implementations.ops import BENCH_OPS

#: a speed-up above this over a vendor baseline is flagged (on CUDA)
SUSPICIOUS_SPEEDUP = 10.0


def baseline_of(op: str, device: str) -> str:
    """The backend every speed-up of benchmark operation ``op`` on ``device`` is measured against."""
    return BENCH_OPS[op].baseline(device).backend


def reference_rows_of(op: str, device: str) -> tuple[str, ...]:
    """The backends every record of benchmark operation ``op`` on ``device`` is set beside
    (``BenchOp.reference_rows``; none for an operation the table does not define)."""
    bench = BENCH_OPS.get(op)
    return tuple(bench.reference_rows.get(device, ())) if bench is not None else ()


def is_vendor(backend: str) -> bool:
    """Whether ``backend`` is a vendor-library baseline of some benchmark operation."""
    return any(b.vendor and b.backend == backend for bench in BENCH_OPS.values() for b in bench.baselines)


def baseline_backends() -> list[BackendLike]:
    """The yardsticks, one of each name, made now."""
    makers = {b.backend: b.yardstick for bench in BENCH_OPS.values() for b in bench.baselines if b.yardstick}
    return [make() for make in makers.values()]
