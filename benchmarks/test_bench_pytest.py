"""pytest-benchmark over the workload table: ``pytest benchmarks/ --benchmark-only``.

The same workloads, backends, baselines and correctness gate as ``attnspec bench``; the quick CPU table by
default. ``ATTNSPEC_BENCH_DEVICE=cuda`` runs the quick GPU table, ``ATTNSPEC_BENCH_FULL=1`` the full table.
A backend that declares a workload unsupported is skipped with its reason; one that fails the gate fails
the test (it is never timed). To guard a branch:

    pytest benchmarks/ --benchmark-only --benchmark-autosave            # on the base commit
    pytest benchmarks/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:25%

Timing goes through ``benchmarks.timing``: each of ``ROUNDS`` rounds (after ``WARMUP`` untimed calls) is one
call followed on CUDA by a synchronize (``synchronized``, as asv's ``time_call``), after the L2 flush
``attnspec bench`` runs between its timed calls (``l2_flusher``), outside the interval. Each result's
``extra_info`` holds the workload, its FLOP or byte count and TFLOP/s or GB/s at the median.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.bench import BASELINE_ORIGIN, bench_backends, implements
from benchmarks.gate import run_gate
from benchmarks.timing import l2_flusher, synchronized
from benchmarks.workloads import OPS, Workload, rates, workloads
from conformance.cases import seed_for
from conformance.results import Status
from implementations.base import dtype_name
from implementations.registry import RegistryEntry

DEVICE = os.environ.get("ATTNSPEC_BENCH_DEVICE", "cpu")
QUICK = os.environ.get("ATTNSPEC_BENCH_FULL") != "1"
#: timed calls per test (pytest-benchmark rounds of one call each) and untimed warm-up calls before them
ROUNDS = 10 if QUICK else 50
WARMUP = 1 if DEVICE == "cpu" else 3


def _cases() -> Iterator[Any]:
    entries = [e for e in bench_backends([], OPS, DEVICE) if e.available]
    for op in OPS:
        for workload in workloads(op, DEVICE, QUICK):
            for entry in entries:
                if entry.origin == BASELINE_ORIGIN and not implements(entry, op):
                    continue
                yield pytest.param(entry, workload,
                                   id=f"{op}-{entry.name}-{workload.label}-{dtype_name(workload.dtype)}")


@pytest.mark.parametrize(("entry", "workload"), list(_cases()))
def test_bench(benchmark: Any, entry: RegistryEntry, workload: Workload) -> None:
    assert entry.backend is not None
    seed = seed_for(f"{workload.op}-{workload.label}-{dtype_name(workload.dtype)}")
    gate, call = run_gate(entry.backend, workload, DEVICE, seed)
    if gate.status is Status.UNSUPPORTED:
        pytest.skip(f"unsupported: {gate.reason}")
    assert gate.status is Status.PASSED and call is not None, f"gate {gate.status}: {gate.reason}"

    benchmark.pedantic(synchronized(call, DEVICE), setup=l2_flusher(DEVICE), rounds=ROUNDS, warmup_rounds=WARMUP)
    tflops, gbps = rates(workload, benchmark.stats.stats.median)
    benchmark.extra_info.update(op=workload.op, backend=entry.name, workload=workload.describe(),
                                dtype=dtype_name(workload.dtype), tflops=tflops, gbps=gbps)
