"""The correctness gate: a backend is timed on a workload only after it computed that workload right.

The backend runs once on fresh seeded random inputs (outputs poisoned, so unwritten elements show up as NaN)
and each output is compared with a float64 torch computation (``conformance.oracle``) by its normwise
relative error ``‖x - ref‖₂ / ‖ref‖₂`` (infinite when x has a NaN or Inf where the reference is finite).
The bound is loose, by the workload's dtype (``GATE_RTOL``): bfloat16 2e-2, float16 1e-2, float32 1e-4. It
catches wrong kernels (their error is of order 1), not precision differences; those are conformance's job.

At GPU sizes the float64 oracle runs on a sample, so that it stays within seconds: attention on the
``(b, h)`` slices ``(0, 0)`` and ``(B-1, H-1)`` (heads are independent), KD and softmax statistics over all
rows in chunks (the KD gradient compared on the first and last rows), the reduction over all inputs.
References are computed once per (workload, seed) and shared by every backend, before any backend runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmarks.workloads import KD_TEMPERATURE, OUTPUTS, AttentionWorkload, Workload, bind, make_inputs, not_supported
from conformance import oracle
from conformance.results import Status
from implementations.base import BackendLike, dtype_name, poisoned_outputs

#: relative-error bound of the gate, by the workload's dtype
GATE_RTOL: dict[torch.dtype, float] = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 1e-4,
                                       torch.float64: 1e-10}
#: rows of a [rows, cols] input the float64 oracle takes at a time (bounds its memory to ~1 GB)
CHUNK_ELEMENTS = 1 << 24
#: rows of the KD gradient compared at each end
KD_GRAD_ROWS = 8

#: how to pick the compared part of an output: an index applied to the backend's tensor (None: all of it)
Index = tuple[object, ...] | None


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


def _row_chunks(rows: int, cols: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // cols)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _attention_slices(B: int, H: int) -> tuple[list[int], list[int]]:
    pairs = sorted({(0, 0), (B - 1, H - 1)})
    return [b for b, _ in pairs], [h for _, h in pairs]


def references(workload: Workload, inputs: dict[str, torch.Tensor]) -> dict[str, tuple[Index, torch.Tensor]]:
    """For each output name of ``OUTPUTS[workload.op]``: the index selecting the compared part of the
    backend's output, and the float64 reference of that part."""
    op = workload.op
    if isinstance(workload, AttentionWorkload):
        bs, hs = _attention_slices(workload.B, workload.H)
        index: Index = (bs, hs)
        # the selected (b, h) slices become the heads of a batch of one
        q, k, v = (inputs[n][bs, hs].unsqueeze(0) for n in ("q", "k", "v"))
        causal = "top_left" if workload.causal else None
        refs: dict[str, tuple[Index, torch.Tensor]] = {}
        if op in ("attention", "attention_fwd_bwd"):
            out, lse = oracle.oracle_attention(q, k, v, causal=causal, scale=workload.scale)
            refs |= {"out": (index, out[0]), "lse": (index, lse[0])}
        if op in ("attention_backward", "attention_fwd_bwd"):
            dout = inputs["dout"][bs, hs].unsqueeze(0)
            grads = oracle.oracle_grads(q, k, v, dout, causal=causal, scale=workload.scale)
            refs |= {name: (index, g[0]) for name, g in zip(("dq", "dk", "dv"), grads)}
        return refs
    x = inputs["s"] if op == "kd_loss" else inputs["x"]
    if op == "reduce_sum":
        total = sum(float(x[c].to("cpu", torch.float64).sum()) for c in _row_chunks(x.numel(), 1))
        return {"value": (None, torch.tensor(total, dtype=torch.float64))}
    rows, cols = x.shape
    chunks = _row_chunks(rows, cols)
    if op == "softmax_stats":
        stats = [oracle.softmax_stats(x[c].cpu(), torch.float64) for c in chunks]
        return {"m": (None, torch.cat([m for m, _ in stats])), "l": (None, torch.cat([l for _, l in stats]))}
    # KD: the loss is the mean over rows, so chunk means weighted by chunk size; ds of a chunk's mean is
    # ds of the full mean times rows / chunk rows.
    t = inputs["t"]
    grad_rows = sorted(set(range(min(KD_GRAD_ROWS, rows))) | set(range(max(rows - KD_GRAD_ROWS, 0), rows)))
    loss, ds_rows = 0.0, {}
    for c in chunks:
        chunk_loss, chunk_ds = oracle.kd_loss(x[c].cpu(), t[c].cpu(), temperature=KD_TEMPERATURE)
        n = c.stop - c.start
        loss += float(chunk_loss) * n / rows
        ds_rows |= {r: chunk_ds[r - c.start] * n / rows for r in grad_rows if c.start <= r < c.stop}
    return {"loss": (None, torch.tensor(loss, dtype=torch.float64)),
            "ds": ((grad_rows,), torch.stack([ds_rows[r] for r in grad_rows]))}


class ReferenceCache:
    """References of the last (workload, seed) seen: the bench loops over backends within a workload."""

    def __init__(self) -> None:
        self._key: tuple[Workload, str, int] | None = None
        self._refs: dict[str, tuple[Index, torch.Tensor]] = {}

    def get(self, workload: Workload, device: str, seed: int,
            inputs: dict[str, torch.Tensor]) -> dict[str, tuple[Index, torch.Tensor]]:
        if self._key != (workload, device, seed):
            self._key, self._refs = None, {}
            self._refs = references(workload, inputs)
            self._key = (workload, device, seed)
        return self._refs


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
        _synchronize(device)
    except Exception as exc:  # a backend may fail in any way; the bench records it and goes on
        return GateResult(Status.ERROR, f"{type(exc).__name__}: {exc}"), None
    names = OUTPUTS[workload.op]
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
