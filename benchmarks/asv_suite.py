"""The asv suite: the quick workload table of benchmarks/workloads.py, per backend, tracked over commits.

One class per operation, ``params`` = backend × workload label (quick GPU table when CUDA is available,
quick CPU table otherwise; the backends available on this machine). ``setup`` raises
``NotImplementedError`` (asv: skipped) when the backend does not implement the operation or declares the
workload unsupported. Benchmarks:

- ``time_call``: seconds per call (asv's own timing loop; on CUDA each call ends with a synchronize);
- ``track_tflops`` / ``track_gbps``: the rate at the median of benchmarks/timing.py's timing (with L2 flush
  on CUDA), TFLOP/s for attention, GB/s over the minimal bytes for the rest;
- ``peakmem_call``: the process's peak resident memory during a call (host memory, asv's own probe).

``PeakExtraMemory.track_peak_extra_bytes`` tracks the peak extra device memory of one call (the CUDA
allocator's peak counter, reset per benchmark; ``tracemalloc`` for NumPy backends on the CPU; skipped
where no probe sees the backend's allocations).

The correctness gate is not run here (asv times what the installed commit computes); ``attnspec bench``
and pytest-benchmark gate first. asv collects only ``time_``/``track_``/``peakmem_``/``mem_`` attributes,
so the other modules of this folder do not add benchmarks (their helpers are named accordingly).
"""

from __future__ import annotations

import os

import torch

from benchmarks.bench import BASELINE_ORIGIN, bench_backends, implements, peak_bytes
from benchmarks.timing import timing_for
from benchmarks.workloads import OPS, Workload, bind, make_inputs, not_supported, rates, workloads
from conformance.cases import seed_for
from implementations.base import BackendLike, dtype_name

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_ENTRIES = {e.name: e for e in bench_backends([], OPS, DEVICE)}
_WORKLOADS: dict[str, dict[str, Workload]] = {
    op: {f"{w.label}-{dtype_name(w.dtype)}": w for w in workloads(op, DEVICE, quick=True)} for op in OPS}


def _prepare(backend_name: str, op: str, label: str) -> tuple[BackendLike, Workload, object]:
    """The backend, workload and bound call of one parameter combination; NotImplementedError skips it."""
    entry = _ENTRIES[backend_name]
    assert entry.backend is not None  # params hold available backends only
    if entry.origin == BASELINE_ORIGIN and not implements(entry, op):
        raise NotImplementedError(f"{backend_name} is a baseline of another operation")
    workload = _WORKLOADS[op][label]
    reasons = not_supported(entry.backend, workload, DEVICE)
    if reasons:
        raise NotImplementedError("; ".join(reasons))
    seed = seed_for(f"{op}-{label}")
    return entry.backend, workload, bind(entry.backend, workload, make_inputs(workload, DEVICE, seed))


def _synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class _Operation:
    """Shared set-up and benchmarks; subclasses set ``op`` and ``params``."""

    op = ""
    param_names = ["backend", "workload"]
    timeout = 600.0

    def setup(self, backend: str, workload: str) -> None:
        self.backend, self.workload, self.call = _prepare(backend, self.op, workload)
        self.call()  # warm-up (compilation, autotuning) outside the timed calls
        _synchronize()

    def time_call(self, backend: str, workload: str) -> None:
        self.call()
        _synchronize()

    def peakmem_call(self, backend: str, workload: str) -> None:
        self.call()
        _synchronize()

    def _rates(self) -> tuple[float | None, float | None]:
        return rates(self.workload, timing_for(self.call, DEVICE, quick=True).median_s)


class _FlopsOperation(_Operation):
    def track_tflops(self, backend: str, workload: str) -> float | None:
        return self._rates()[0]

    track_tflops.unit = "TFLOP/s"  # type: ignore[attr-defined]


class _BytesOperation(_Operation):
    def track_gbps(self, backend: str, workload: str) -> float | None:
        return self._rates()[1]

    track_gbps.unit = "GB/s"  # type: ignore[attr-defined]


#: ``ATTNSPEC_ASV_BACKENDS="triton torch.sum ..."`` keeps only these backends in ``params`` (every parameter
#: combination costs asv a process, which on a GPU means importing torch and compiling kernels afresh)
_ONLY = set(os.environ.get("ATTNSPEC_ASV_BACKENDS", "").split())


def _backends(op: str) -> list[str]:
    """Backends that can run ``op`` here: available, and baselines only for their own operation (each
    parameter combination costs asv a process, so hopeless ones are left out of ``params``)."""
    return sorted(name for name, e in _ENTRIES.items()
                  if e.available and (e.origin != BASELINE_ORIGIN or implements(e, op))
                  and (not _ONLY or name in _ONLY))


def _params(op: str) -> list[list[str]]:
    return [_backends(op), list(_WORKLOADS[op])]


class AttentionForward(_FlopsOperation):
    op = "attention"
    params = _params(op)


class AttentionBackward(_FlopsOperation):
    op = "attention_backward"
    params = _params(op)


class AttentionForwardBackward(_FlopsOperation):
    op = "attention_fwd_bwd"
    params = _params(op)


class KDLoss(_BytesOperation):
    op = "kd_loss"
    params = _params(op)


class SoftmaxStats(_BytesOperation):
    op = "softmax_stats"
    params = _params(op)


class ReduceSum(_BytesOperation):
    op = "reduce_sum"
    params = _params(op)


class PeakExtraMemory:
    """Peak extra device memory of one call, per backend and (operation, workload)."""

    params = [sorted({name for op in OPS for name in _backends(op)}),
              [f"{op}:{label}" for op in OPS for label in _WORKLOADS[op]]]
    param_names = ["backend", "workload"]
    timeout = 600.0

    def setup(self, backend: str, workload: str) -> None:
        op, label = workload.split(":", 1)
        self.backend, _, self.call = _prepare(backend, op, label)
        if DEVICE == "cpu" and peak_bytes(self.call, DEVICE, self.backend)[0] is None:
            raise NotImplementedError("no probe sees this backend's allocations on the CPU")

    def track_peak_extra_bytes(self, backend: str, workload: str) -> int | None:
        return peak_bytes(self.call, DEVICE, self.backend)[0]

    track_peak_extra_bytes.unit = "bytes"  # type: ignore[attr-defined]
