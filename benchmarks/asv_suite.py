"""The asv suite: the quick workload table of benchmarks/workloads.py, per backend, tracked over commits.

One class per benchmark operation (``implementations.ops.BENCH_OPS``, named by its ``asv_class``),
``params`` = backend × workload label. Nothing is discovered at import: ``params``
hold names, and ``setup`` finds the backend (cached per process), raising ``NotImplementedError`` (asv:
skipped) when it is unavailable here, does not implement the operation, or declares the workload
unsupported. asv runs every parameter combination in a fresh process, so the default set is sized to
finish in minutes (docs/benchmarks.md, "asv"):

- backends: ``DEFAULT_BACKENDS[device]`` plus each operation's baseline; on the CPU the Triton interpreter
  is left out (it times NumPy emulating the kernel, not the kernel). ``ATTNSPEC_ASV_BACKENDS="a b ..."``
  replaces the list (any registered name, e.g. ``triton`` or a plugin's backend);
- workloads: per operation the largest quick workload (attention: non-causal and causal);
  ``ATTNSPEC_ASV_FULL=1`` takes the whole quick table;
- benchmarks: ``time_call`` (seconds per call, asv's own timing loop; on CUDA each call ends with a
  synchronize); on CUDA (on the CPU with ``ATTNSPEC_ASV_FULL=1``) also ``track_tflops`` / ``track_gbps``
  (the rate at the median of benchmarks/timing.py's timing, L2 flushed on CUDA; TFLOP/s for attention, GB/s
  over the minimal bytes for the rest); with ``ATTNSPEC_ASV_FULL=1`` ``track_peak_extra_bytes`` (the CUDA
  allocator's peak extra bytes of one call; ``tracemalloc`` for NumPy backends on the CPU); on CUDA the
  attention classes also ``track_vs_flex`` / ``track_vs_cudnn`` (compiled FlexAttention's and SDPA cuDNN's
  median over the backend's, both timed in the process: the ratios ``attnspec bench`` writes as ``vs``).

On the CPU ``time_call`` is single-threaded CPU time (``time.process_time`` with torch's and the BLAS
thread pools held to one thread): other processes taking the cores slow the wall clock but not the
process's CPU time, so unchanged code is not flagged on a busy machine.

The correctness gate is not run here (asv times what the installed commit computes); ``attnspec bench``
and pytest-benchmark gate first. asv collects only ``time_``/``track_``/``peakmem_``/``mem_`` attributes,
so the other modules of this folder do not add benchmarks (their helpers are named accordingly).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import torch

from benchmarks.baselines import baseline_of
from benchmarks.bench import bench_backends, implements, peak_bytes
from benchmarks.timing import synchronized, timing_for
from benchmarks.workloads import AttentionWorkload, Workload, bind, make_inputs, not_supported, rates, workloads
from conformance.cases import seed_for
from implementations.base import BackendLike, dtype_name
from implementations.ops import BENCH_OPS, BenchOp
from implementations.registry import RegistryEntry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the backends of the default set per device (each operation's baseline is added to them)
DEFAULT_BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": ("reference", "reference-tiled", "torch"),
    "cuda": ("torch-flash", "torch-cudnn", "torch-efficient", "triton", "cupy"),
}
#: ``ATTNSPEC_ASV_BACKENDS="triton torch.sum ..."`` replaces the default backends
SELECTED_BACKENDS: tuple[str, ...] = tuple(os.environ.get("ATTNSPEC_ASV_BACKENDS", "").split())
#: ``ATTNSPEC_ASV_FULL=1``: every quick workload, the peak-memory benchmark, and the rates on the CPU too
FULL = os.environ.get("ATTNSPEC_ASV_FULL", "").strip().lower() in ("1", "true", "yes", "on")
#: the rates are part of the default set on CUDA, where they are the figures kernels are judged by
RATES = FULL or DEVICE == "cuda"


def backend_names(op: str) -> list[str]:
    """The backend parameter of ``op``: the selected (or default) backends and the operation's baseline."""
    names = list(SELECTED_BACKENDS or DEFAULT_BACKENDS[DEVICE])
    baseline = baseline_of(op, DEVICE)
    return sorted(names + [baseline] if baseline not in names else names)


def workload_table(op: str) -> dict[str, Workload]:
    """The workload parameter of ``op`` by label: the whole quick table with ``FULL``, else the largest
    quick workload (for attention the largest of each causal setting)."""
    table = workloads(op, DEVICE, quick=True)
    if not FULL:
        groups: dict[bool, list[Workload]] = {}
        for w in table:
            groups.setdefault(isinstance(w, AttentionWorkload) and w.causal, []).append(w)
        table = [max(group, key=lambda w: w.flops if w.flops is not None else w.min_bytes) for group in groups.values()]
    return {f"{w.label}-{dtype_name(w.dtype)}": w for w in table}


@functools.cache
def _entry(name: str, op: str) -> RegistryEntry:
    """The registry entry of backend ``name`` (with ``op``'s baseline beside it); made on first use, in this
    process: asv runs each benchmark in a process of its own, so a factory that crashes ends only that one,
    and a discovery child per benchmark would count against asv's setup timeout."""
    entries = {e.name: e for e in bench_backends([name], [op], DEVICE, isolate=False)}
    return entries[name]


def _prepare(backend_name: str, op: str, label: str) -> tuple[BackendLike, Workload, Callable[[], tuple]]:
    """The backend, workload and bound call of one parameter combination; NotImplementedError skips it."""
    entry = _entry(backend_name, op)
    if entry.backend is None:
        raise NotImplementedError(f"{backend_name} is unavailable here: {entry.unavailable}")
    if not implements(entry, op):
        raise NotImplementedError(f"{backend_name} does not implement {op}")
    workload = workload_table(op)[label]
    reasons = not_supported(entry.backend, workload, DEVICE)
    if reasons:
        raise NotImplementedError("; ".join(reasons))
    seed = seed_for(f"{op}-{label}")
    return entry.backend, workload, bind(entry.backend, workload, make_inputs(workload, DEVICE, seed))


def _single_threaded() -> None:
    """Hold torch's and the BLAS libraries' thread pools to one thread (CPU timing measures CPU time)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


class _Operation:
    """Shared set-up and benchmarks; subclasses set ``op`` and ``params``."""

    op = ""
    param_names = ["backend", "workload"]
    timeout = 600.0
    #: asv's timing loop: 2 rounds (separate processes, interleaved across commits by ``asv continuous``),
    #: 5 to 10 samples of at least 20 ms each per round
    rounds = 2
    repeat = (5, 10, 2.0)
    sample_time = 0.02
    if DEVICE == "cpu":
        timer = staticmethod(time.process_time)

    def setup(self, backend: str, workload: str) -> None:
        if DEVICE == "cpu":
            _single_threaded()
        self.backend, self.workload, self.call = _prepare(backend, self.op, workload)
        self.timed = synchronized(self.call, DEVICE)
        self.timed()  # warm-up (compilation, autotuning) outside the timed calls

    def time_call(self, backend: str, workload: str) -> None:
        self.timed()

    def _rates(self) -> tuple[float | None, float | None]:
        return rates(self.workload, timing_for(self.call, DEVICE, quick=True).median_s)

    if FULL:
        def track_peak_extra_bytes(self, backend: str, workload: str) -> int | None:
            """Peak extra memory of one call (None where no probe sees the backend's allocations)."""
            return peak_bytes(self.call, DEVICE, self.backend)[0]

        track_peak_extra_bytes.unit = "bytes"  # type: ignore[attr-defined]
        track_peak_extra_bytes.rounds = 1  # type: ignore[attr-defined]  # deterministic per commit


class _FlopsOperation(_Operation):
    if RATES:
        def track_tflops(self, backend: str, workload: str) -> float | None:
            return self._rates()[0]

        track_tflops.unit = "TFLOP/s"  # type: ignore[attr-defined]
        track_tflops.rounds = 1  # type: ignore[attr-defined]  # its own timing loop takes the samples

    def _ratio_to(self, reference: str, label: str) -> float | None:
        """The reference row's median / this backend's median on the workload, both timed in this process
        (``BenchOp.reference_rows``); None where the reference cannot run the workload here."""
        try:
            reference_call = _prepare(reference, self.op, label)[2]
        except NotImplementedError:
            return None
        synchronized(reference_call, DEVICE)()  # warm-up (compilation) outside the timed calls
        mine = timing_for(self.call, DEVICE, quick=True).median_s
        return timing_for(reference_call, DEVICE, quick=True).median_s / mine

    if DEVICE == "cuda":
        def track_vs_flex(self, backend: str, workload: str) -> float | None:
            """Compiled FlexAttention's time / this backend's (above 1: faster than flex)."""
            return self._ratio_to("flex", workload)

        def track_vs_cudnn(self, backend: str, workload: str) -> float | None:
            """SDPA cuDNN's time / this backend's (above 1: faster than cuDNN)."""
            return self._ratio_to("torch-cudnn", workload)

        for _track in (track_vs_flex, track_vs_cudnn):
            _track.unit = "ratio"  # type: ignore[attr-defined]
            _track.rounds = 1  # type: ignore[attr-defined]  # its own timing loops take the samples
        del _track


class _BytesOperation(_Operation):
    if RATES:
        def track_gbps(self, backend: str, workload: str) -> float | None:
            return self._rates()[1]

        track_gbps.unit = "GB/s"  # type: ignore[attr-defined]
        track_gbps.rounds = 1  # type: ignore[attr-defined]  # its own timing loop takes the samples


def _params(op: str) -> list[list[str]]:
    return [backend_names(op), list(workload_table(op))]


def _suite_class(bench: BenchOp) -> type[_Operation]:
    """The asv class of ``bench``, named ``bench.asv_class`` (the name its history is kept under)."""
    base = _FlopsOperation if bench.flops is not None else _BytesOperation
    return type(bench.asv_class, (base,), {"op": bench.name, "params": _params(bench.name), "__module__": __name__})


# one class per benchmark operation, at module level where asv looks for them
globals().update({bench.asv_class: _suite_class(bench) for bench in BENCH_OPS.values()})
