"""Timing done right, and the machine's ceilings that benchmark figures are read against.

GPU (:func:`cuda_timing`): warm-up calls, then each timed call is preceded by writing a 256 MiB buffer (which
evicts the L2 cache, 50-60 MB on Hopper, so no call finds its inputs there from the previous one), and is
bracketed by CUDA events on the stream; optionally the call is captured once in a CUDA graph and the graph is
replayed (launch overhead removed). CPU (:func:`cpu_timing`): ``time.perf_counter`` around each call after a
warm-up. Both report the median and the inter-quartile range (IQR = q75 - q25) of the per-call times.

Ceilings (:func:`measure_ceilings`), measured at the start of a run: the matmul rate (GPU: bfloat16
``8192³`` ``torch.matmul``, ``2·n³`` FLOPs; CPU: float32 ``1024³``) and the copy bandwidth (a large tensor
``copy_``, counting the bytes read plus the bytes written). A figure's *fraction of ceiling* is its TFLOP/s
over the matmul rate (attention) or its GB/s over the copy bandwidth (memory-bound operations).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from conformance.records import Ceilings
from implementations.base import dtype_name

#: bytes written between timed GPU calls to evict the L2 cache
L2_FLUSH_BYTES = 256 << 20


@dataclass(frozen=True)
class Timing:
    """Per-call seconds: median and inter-quartile range over ``reps`` calls, and how they were taken."""

    median_s: float
    iqr_s: float
    reps: int
    method: str


def summarize(samples: list[float], method: str) -> Timing:
    """Median and IQR (``q75 - q25``, inclusive quartiles) of ``samples`` (seconds)."""
    if not samples:
        raise ValueError("no samples to summarize")
    if len(samples) == 1:
        return Timing(samples[0], 0.0, 1, method)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(statistics.median(samples), q3 - q1, len(samples), method)


def cpu_timing(fn: Callable[[], object], *, budget_s: float = 0.5, min_reps: int = 5, max_reps: int = 10_000,
             warmup: int = 1) -> Timing:
    """Time ``fn`` with ``time.perf_counter``: ``warmup`` untimed calls, then at least ``min_reps`` timed
    calls and more until ``budget_s`` seconds of timed calls have passed (at most ``max_reps``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_reps or (spent < budget_s and len(samples) < max_reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        spent += samples[-1]
    return summarize(samples, "perf_counter")


def synchronized(fn: Callable[[], object], device: str) -> Callable[[], None]:
    """``fn`` followed, on CUDA, by a device synchronize: one call as a host clock times it (asv's
    ``time_call``, pytest-benchmark), with the kernels it queued inside the interval."""

    def call() -> None:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    return call


def l2_flusher(device: str) -> Callable[[], None]:
    """What runs before each timed call, outside the interval: on CUDA, zeroing an ``L2_FLUSH_BYTES`` buffer
    (allocated now), which evicts the L2 cache so no call finds its inputs there; nothing on the CPU."""
    if device != "cuda":
        return lambda: None
    buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    return buffer.zero_


def _capture_graph(fn: Callable[[], object]) -> Callable[[], object]:
    """Capture ``fn`` in a CUDA graph (after warm-up on a side stream) and return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def cuda_timing(fn: Callable[[], object], *, budget_s: float = 1.0, min_reps: int = 10, max_reps: int = 200,
              warmup: int = 3, flush_l2: bool = True, cuda_graph: bool = False) -> Timing:
    """Time ``fn`` on the current CUDA stream with CUDA events.

    ``warmup`` untimed calls; one more call estimates the cost, from which the number of timed calls is
    chosen to fill ``budget_s`` (clamped to ``[min_reps, max_reps]``). Before each timed call a
    ``L2_FLUSH_BYTES`` buffer is zeroed (outside the events) when ``flush_l2``. With ``cuda_graph`` the call
    is captured once and replayed; if capture fails, eager calls are timed and ``method`` says why.
    """
    method = "cuda-events"
    call = fn
    if cuda_graph:
        try:
            call = _capture_graph(fn)
            method = "cuda-graph"
        except Exception as exc:  # a backend may not be capturable (host sync, CuPy streams): time it eagerly
            torch.cuda.synchronize()
            method = f"cuda-events (graph capture failed: {type(exc).__name__}: {exc})"
    flush = l2_flusher("cuda") if flush_l2 else (lambda: None)
    for _ in range(warmup):
        call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush()
    start.record()
    call()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 1e3, 1e-7)
    reps = max(min_reps, min(max_reps, int(budget_s / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush()
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], method)


def timing_for(fn: Callable[[], object], device: str, *, quick: bool, cuda_graph: bool = False) -> Timing:
    """:func:`cuda_timing` or :func:`cpu_timing` with the run's budgets of timed seconds per record
    (GPU 0.5 s, CPU 0.5 s; ``quick``: 0.2 s, 0.1 s)."""
    if device == "cuda":
        return cuda_timing(fn, budget_s=0.2 if quick else 0.5, cuda_graph=cuda_graph)
    return cpu_timing(fn, budget_s=0.1 if quick else 0.5, min_reps=3 if quick else 5)


def measure_ceilings(device: str, name: str) -> Ceilings:
    """The machine's matmul rate and copy bandwidth on ``device``, measured now.

    GPU: bfloat16 ``8192³`` matmul and a 1 GiB device-to-device copy. CPU: float32 ``1024³`` matmul and a
    64 MiB copy (about a second in all, so that fractions of ceiling are meaningful on a CPU run too).
    ``name`` is the GPU's or CPU's name the record carries.
    """
    started = time.monotonic()
    if device == "cuda":
        n, dtype, copy_bytes = 8192, torch.bfloat16, 1 << 30
    else:
        n, dtype, copy_bytes = 1024, torch.float32, 64 << 20
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    src = torch.ones(copy_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    if device == "cuda":
        mm = cuda_timing(lambda: torch.matmul(a, b), budget_s=0.5, flush_l2=False)
        cp = cuda_timing(lambda: dst.copy_(src), budget_s=0.5, flush_l2=False)
    else:
        mm = cpu_timing(lambda: torch.matmul(a, b), budget_s=0.3, min_reps=3)
        cp = cpu_timing(lambda: dst.copy_(src), budget_s=0.3, min_reps=3)
    return Ceilings(matmul_tflops=2 * n**3 / mm.median_s / 1e12, copy_gbps=2 * copy_bytes / cp.median_s / 1e9,
                    matmul=f"{dtype_name(dtype)} {n}x{n} @ {n}x{n}",
                    copy=f"{copy_bytes >> 20} MiB copy_, read + write counted", device=name,
                    seconds=time.monotonic() - started)
