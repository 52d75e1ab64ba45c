"""The workload table: every shape the benchmarks time, its FLOP or byte count, and how to call it.

``attnspec bench``, pytest-benchmark (``benchmarks/test_bench_pytest.py``) and asv
(``benchmarks/asv_suite.py``) all read this module, which reads the benchmark operations each operation's
module defines (``implementations.ops.BENCH_OPS``: the table per device, the inputs, the bound call, the
FLOP or byte count of SPEC.md "FLOP and byte counts used by benchmarks"). Here: the seeding of the inputs,
the rates, the declared reasons a backend skips a workload, and the memory-scaling sweep.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from implementations.base import BackendLike
from implementations.ops import BENCH_OPS, AttentionWorkload, RowsWorkload

#: the benchmark operations, in the order the benchmarks run them
OPS: tuple[str, ...] = tuple(BENCH_OPS)

#: memory-scaling sweeps (peak extra memory against S, B = 1)
MEMORY_SEQ_LENS = {"cuda": (1024, 2048, 4096, 8192, 16384, 32768), "cpu": (128, 256, 512, 1024)}
MEMORY_HEADS = {"cuda": 16, "cpu": 2}
MEMORY_HEAD_DIM = {"cuda": 128, "cpu": 64}

Workload = AttentionWorkload | RowsWorkload


def workloads(op: str, device: str, quick: bool = False) -> list[Workload]:
    """The table of ``op`` for ``device`` (``"cuda"`` or ``"cpu"``); ``quick`` keeps a small subset."""
    if op not in BENCH_OPS:
        raise ValueError(f"unknown benchmark operation {op!r} (known: {', '.join(OPS)})")
    return BENCH_OPS[op].workloads(device, quick)


def memory_workloads(op: str, device: str) -> list[AttentionWorkload]:
    """The memory-scaling sweep of ``op`` (``attention`` or ``attention_backward``): B = 1, non-causal,
    S over ``MEMORY_SEQ_LENS[device]``."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return [AttentionWorkload(BENCH_OPS[op], 1, MEMORY_HEADS[device], S, MEMORY_HEAD_DIM[device], False, dtype)
            for S in MEMORY_SEQ_LENS[device]]


def rates(workload: Workload, seconds: float) -> tuple[float | None, float | None]:
    """``(TFLOP/s, GB/s)`` of one call taking ``seconds``; the one that does not apply is None."""
    flops, nbytes = workload.flops, workload.min_bytes
    return (flops / seconds / 1e12 if flops is not None else None,
            nbytes / seconds / 1e9 if nbytes is not None else None)


def not_supported(backend: BackendLike, workload: Workload, device: str) -> list[str]:
    """The backend's declared reasons (``not_supported_reasons``) against every contract call it needs."""
    reasons: list[str] = []
    for op, case in workload.cases(backend, device):
        reasons += [r for r in backend.not_supported_reasons(op, case) if r not in reasons]
    return reasons


def make_inputs(workload: Workload, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Fresh seeded random inputs of ``workload`` (its operation's ``inputs``), drawn on ``device`` itself
    (GPU workloads reach ``8192 × 131072`` elements, too large to draw on the CPU and copy over on every
    record)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return workload.bench.inputs(workload, g, device)


def bind(backend: BackendLike, workload: Workload, inputs: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    """A zero-argument call of ``backend`` on ``inputs`` returning the outputs its operation names
    (``BenchOp.outputs``); work the call needs first (the forward a backward reads) runs here, untimed."""
    return workload.bench.bind(backend, workload, inputs)
