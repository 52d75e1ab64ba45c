"""The correctness gate: a backend is timed on a workload only after it computed that workload right.

The backend runs once on fresh seeded random inputs (outputs poisoned, so unwritten elements show up as NaN)
and each output is compared with a float64 reference (its operation's oracle) by its normwise
relative error ``‖x - ref‖₂ / ‖ref‖₂`` (infinite when x has a NaN or Inf where the reference is finite).
The bound is loose, by the workload's dtype (``GATE_RTOL``): bfloat16 2e-2, float16 1e-2, float32 1e-4. It
catches wrong kernels (their error is of order 1), not precision differences; those are conformance's job.

Each benchmark operation defines the float64 reference of its outputs (``BenchOp.reference``, in its
operation's module); at GPU sizes it is taken on a sample, so that it stays within seconds (attention on two
``(b, h)`` slices, the KD gradient on its first and last rows). References are computed once per (workload,
seed) and shared by every backend, before any backend runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmarks.workloads import Workload, bind, make_inputs, not_supported
from conformance.results import Status
from implementations.base import BackendLike, dtype_name, poisoned_outputs
from implementations.ops.workload import Reference

#: relative-error bound of the gate, by the workload's dtype
GATE_RTOL: dict[torch.dtype, float] = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 1e-4,
                                       torch.float64: 1e-10}


@dataclass
class GateResult:
    """``status`` is passed, failed, unsupported or error; ``errors`` the relative error of each compared
    output; ``reason`` says why a non-passing gate did not pass."""

    status: Status
    reason: str | None = None
    errors: dict[str, float] = field(default_factory=dict)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖x - ref‖₂ / ‖ref‖₂`` in float64 (``‖x - ref‖₂`` when ``ref`` is 0); inf on NaN/Inf in ``x`` where
    ``ref`` is finite. Shapes must agree (ValueError otherwise)."""
    xd = x.detach().to("cpu", torch.float64)
    rd = ref.detach().to("cpu", torch.float64)
    if xd.shape != rd.shape:
        raise ValueError(f"shape {tuple(xd.shape)} differs from the reference's {tuple(rd.shape)}")
    if not bool(torch.isfinite(xd[torch.isfinite(rd)]).all()):
        return math.inf
    diff = float(torch.linalg.vector_norm(xd - rd))
    norm = float(torch.linalg.vector_norm(rd))
    return diff / norm if norm > 0 else diff


class ReferenceCache:
    """References of the last (workload, seed) seen: the bench loops over backends within a workload."""

    def __init__(self) -> None:
        self._key: tuple[Workload, str, int] | None = None
        self._refs: dict[str, Reference] = {}

    def get(self, workload: Workload, device: str, seed: int, inputs: dict[str, torch.Tensor]) -> dict[str, Reference]:
        if self._key != (workload, device, seed):
            self._key, self._refs = None, {}
            self._refs = workload.bench.reference(workload, inputs)
            self._key = (workload, device, seed)
        return self._refs


def run_gate(backend: BackendLike, workload: Workload, device: str, seed: int,
             cache: ReferenceCache | None = None) -> tuple[GateResult, Callable[[], tuple] | None]:
    """Gate ``backend`` on ``workload``: the result, and the bound call (for timing) when it passed.

    Unsupported (the backend's declared reasons) and errors (an exception from the backend, or an input
    it rejects) are results too, never raised.
    """
    reasons = not_supported(backend, workload, device)
    if reasons:
        return GateResult(Status.UNSUPPORTED, "; ".join(reasons)), None
    cache = cache or ReferenceCache()
    try:
        inputs = make_inputs(workload, device, seed)
        refs = cache.get(workload, device, seed, inputs)  # before the backend runs: it might write its inputs
        with poisoned_outputs():
            call = bind(backend, workload, inputs)
            outputs = call()
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # a backend may fail in any way; the bench records it and goes on
        return GateResult(Status.ERROR, f"{type(exc).__name__}: {exc}"), None
    names = workload.bench.outputs
    if not isinstance(outputs, tuple | list) or len(outputs) != len(names):
        return GateResult(Status.FAILED, f"expected outputs {names}, got {type(outputs).__name__}"), None
    bound = GATE_RTOL[workload.dtype]
    errors: dict[str, float] = {}
    problems: list[str] = []
    for name, value in zip(names, outputs):
        index, ref = refs[name]
        try:
            errors[name] = relative_error(value if index is None else value[index], ref)
        except (ValueError, TypeError, IndexError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        if not errors[name] <= bound:
            problems.append(f"{name}: relative error {errors[name]:.3g} > {bound:g} ({dtype_name(workload.dtype)})")
    if problems:
        return GateResult(Status.FAILED, "; ".join(problems), errors), None
    return GateResult(Status.PASSED, None, errors), call
