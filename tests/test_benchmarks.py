"""Tests of the benchmark harness (benchmarks/): counts, tables, gate, memory scaling, JSON output.

No test here checks a speed: figures come from benchmark runs, not from unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import bench
from benchmarks.bench import main, measure, memory_scaling
from benchmarks.gate import ReferenceCache, relative_error, run_gate
from benchmarks.workloads import OPS, AttentionWorkload, RowsWorkload, memory_workloads, rates, workloads
from conformance.codec import read_bench
from conformance.records import BenchRecord, Ceilings
from conformance.results import Status
from implementations.base import Backend, Capabilities, new_output
from implementations.ops import BENCH_OPS, kd_loss, reduce_sum, softmax_stats
from implementations.ops.attention import forward_flops as attention_forward_flops
from implementations.ops.attention_backward import backward_flops as attention_backward_flops
from implementations.reference import ReferenceBackend
from implementations.registry import RegistryEntry

CEILINGS = Ceilings(matmul_tflops=1.0, copy_gbps=1.0)
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# FLOP and byte counts


def test_attention_forward_flops_hand_computed() -> None:
    assert attention_forward_flops(1, 1, 1024, 1024, 64, causal=False) == 4 * 1024 * 1024 * 64
    assert attention_forward_flops(1, 1, 1024, 1024, 64, causal=True) == 2 * 1024 * 1024 * 64
    # B=16, H=16, S=1024, D=128: 4·16·16·1024²·128
    assert attention_forward_flops(16, 16, 1024, 1024, 128, causal=False) == 137_438_953_472


def test_backward_is_two_and_a_half_forward() -> None:
    fwd = attention_forward_flops(2, 3, 256, 256, 64, causal=False)
    assert fwd == 4 * 2 * 3 * 256 * 256 * 64 == 100_663_296
    assert attention_backward_flops(2, 3, 256, 256, 64, causal=False) == fwd * 5 // 2 == 251_658_240
    shape = (2, 3, 256, 256, 64)
    assert attention_forward_flops(*shape, causal=True) + attention_backward_flops(*shape, causal=True) == 7 * fwd // 4


def test_causal_count_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="Sq = Sk"):
        attention_forward_flops(1, 1, 128, 256, 64, causal=True)
    assert attention_forward_flops(1, 1, 128, 256, 64, causal=False) == 4 * 128 * 256 * 64


def test_byte_counts() -> None:
    assert kd_loss.min_bytes(8192, 131072, 4) == 3 * 8192 * 131072 * 4  # read s, t; write ds
    assert reduce_sum.min_bytes(1 << 28, 4) == 1 << 30  # read once
    assert softmax_stats.min_bytes(8192, 131072, 2) == 8192 * 131072 * 2 + 8192 * 8  # read x, write m, l
    assert RowsWorkload(BENCH_OPS["kd_loss"], 8192, 131072, torch.bfloat16).min_bytes == 3 * 8192 * 131072 * 2


def test_rates_use_the_one_count_that_applies() -> None:
    w = AttentionWorkload(BENCH_OPS["attention"], 1, 1, 1024, 64, False, torch.float32)
    assert rates(w, 1e-3) == pytest.approx((4 * 1024**2 * 64 / 1e-3 / 1e12, None))
    r = RowsWorkload(BENCH_OPS["reduce_sum"], 1, 1 << 20, torch.float32)
    tflops, gbps = rates(r, 1e-3)
    assert tflops is None and gbps == pytest.approx(4 * 2**20 / 1e-3 / 1e9)


# ------------------------------------------------------------------------------------------------
# Tables


def test_gpu_attention_table() -> None:
    table = workloads("attention", "cuda")
    assert len(table) == 2 * 2 * 6  # D x causal x S
    assert {w.S for w in table} == {512, 1024, 2048, 4096, 8192, 16384}
    for w in table:
        assert w.B * w.S == 16384 and w.H * w.D == 2048 and w.dtype == torch.bfloat16
    assert workloads("attention_backward", "cuda")[0].flops == table[0].flops * 5 // 2


def test_rows_tables_reach_the_spec_sizes() -> None:
    assert max(w.rows * w.cols for w in workloads("kd_loss", "cuda")) == 8192 * 131072
    assert max(w.rows * w.cols for w in workloads("softmax_stats", "cuda")) == 8192 * 131072
    assert max(w.cols for w in workloads("reduce_sum", "cuda")) == 1 << 28
    assert [w.label for w in workloads("reduce_sum", "cuda")] == ["n2^24", "n2^26", "n2^28"]


def test_every_op_has_quick_cpu_workloads_and_labels_are_unique() -> None:
    for op in OPS:
        for quick in (True, False):
            table = workloads(op, "cpu", quick)
            assert table, op
            assert len({(w.label, w.dtype) for w in table}) == len(table)
    with pytest.raises(ValueError, match="unknown benchmark operation"):
        workloads("matmul", "cpu")


def test_memory_sweeps() -> None:
    assert [w.S for w in memory_workloads("attention", "cuda")] == [1024, 2048, 4096, 8192, 16384, 32768]
    assert [w.S for w in memory_workloads("attention_backward", "cpu")] == [128, 256, 512, 1024]


# ------------------------------------------------------------------------------------------------
# The gate


class WrongReference(ReferenceBackend):
    """The reference with its attention output scaled by 1.5: must fail the gate."""

    name = "wrong-reference"

    def attention(self, q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN201
        out, lse = super().attention(q, k, v, **kwargs)
        return out * 1.5, lse


class LazyReference(ReferenceBackend):
    """Leaves its KD gradient unwritten (poisoned outputs show it as NaN)."""

    name = "lazy-reference"

    def kd_loss(self, s, t, **kwargs):  # noqa: ANN001, ANN003, ANN201
        loss, _ = super().kd_loss(s, t, **kwargs)
        return loss, new_output(s.shape, s.dtype, s.device)


class NoCausal(ReferenceBackend):
    name = "no-causal"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), backward_dtypes=(torch.float32,),
                                causal=())


def test_relative_error() -> None:
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(ref, ref) == 0
    assert relative_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([float("nan"), 4.0]), ref) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        relative_error(torch.zeros(3), ref)


def test_correct_backend_passes_the_gate() -> None:
    w = workloads("attention_fwd_bwd", "cpu", quick=True)[-1]
    result, call = run_gate(ReferenceBackend(), w, "cpu", seed=1)
    assert result.status == "passed", result.reason
    assert set(result.errors) == {"out", "lse", "dq", "dk", "dv"} and max(result.errors.values()) < 1e-6
    assert call is not None


def test_wrong_backend_fails_the_gate_and_is_not_timed() -> None:
    w = workloads("attention", "cpu", quick=True)[0]
    record = measure(WrongReference(), w, "cpu", 1, quick=True, cuda_graph=False, ceilings=CEILINGS,
                     cache=ReferenceCache())
    assert record.gate is Status.FAILED
    assert "out: relative error" in record.reason
    assert record.median_s is None and record.tflops is None and record.peak_extra_bytes is None


def test_unwritten_output_fails_the_gate() -> None:
    w = workloads("kd_loss", "cpu", quick=True)[0]
    result, call = run_gate(LazyReference(), w, "cpu", seed=2)
    assert result.status == "failed" and "ds" in result.reason and call is None


def test_declared_unsupported_is_recorded_with_the_reason() -> None:
    causal = next(w for w in workloads("attention", "cpu", quick=True) if w.causal)
    record = measure(NoCausal(), causal, "cpu", 1, quick=True, cuda_graph=False, ceilings=CEILINGS,
                     cache=ReferenceCache())
    assert record.gate is Status.UNSUPPORTED and "causal" in record.reason and record.median_s is None


def test_backend_exception_is_an_error_record() -> None:
    class Broken(ReferenceBackend):
        name = "broken"

        def softmax_stats(self, x, *, block=None):  # noqa: ANN001, ANN201
            raise RuntimeError("kernel launch failed")

    w = workloads("softmax_stats", "cpu", quick=True)[0]
    record = measure(Broken(), w, "cpu", 1, quick=True, cuda_graph=False, ceilings=CEILINGS, cache=ReferenceCache())
    assert record.gate is Status.ERROR and "kernel launch failed" in record.reason


# ------------------------------------------------------------------------------------------------
# Memory scaling: the slope fit on backends whose allocations grow as S and as S².


class _Allocating(Backend):
    """Attention that only allocates a NumPy buffer of ``width(S)`` columns per query row (for the probe)."""

    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), backward_dtypes=())
    columns = staticmethod(lambda S: S)

    def attention(self, q, k, v, *, causal=None, scale=None, tiles=None):  # noqa: ANN001, ANN201
        S = q.shape[2]
        scratch = np.ones((q.shape[1], S, self.columns(S)))
        return torch.zeros_like(q) + float(scratch[0, 0, 0]), torch.zeros(q.shape[:3])


class Quadratic(_Allocating):
    name = "quadratic"


class Linear(_Allocating):
    name = "linear"
    columns = staticmethod(lambda S: 64)


def test_memory_scaling_slope() -> None:
    entries = [RegistryEntry(b.name, "test", backend=b) for b in (Quadratic(), Linear())]
    rows = {r.backend: r for r in memory_scaling(entries, "cpu")}
    assert set(rows) == {"quadratic", "linear"}  # no backward: that op is left out
    assert rows["quadratic"].S == [128, 256, 512, 1024]
    assert rows["quadratic"].slope == pytest.approx(2.0, abs=0.1)
    assert rows["linear"].slope == pytest.approx(1.0, abs=0.1)
    assert rows["linear"].peak_extra_bytes[-1] >= 2 * 1024 * 64 * 8


# ------------------------------------------------------------------------------------------------
# A tiny CPU run end to end: the JSON schema.

RECORD_KEYS = {"op", "backend", "device", "dtype", "workload", "label", "seed", "gate", "reason", "errors",
               "median_s", "iqr_s", "reps", "timing", "timed", "tflops", "gbps", "fraction_of_ceiling",
               "peak_extra_bytes", "peak_probe", "baseline", "speedup", "vs", "flag"}


def test_tiny_cpu_run_json_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    started = time.monotonic()
    rc = main(["--quick", "--device", "cpu", "--backend", "reference", "--backend", "torch", "--op", "attention",
               "--op", "reduce_sum", "--output", str(out)])
    assert rc == 0
    assert time.monotonic() - started < 60
    doc = json.loads(out.read_text())
    assert doc["kind"] == "bench" and doc["device"] == "cpu" and doc["finished"] and not doc["interrupted"]
    assert {"python", "torch", "commit", "timestamp"} <= set(doc["provenance"])
    assert {"matmul_tflops", "copy_GBps", "device"} <= set(doc["ceilings"])
    assert doc["ceilings"]["matmul_tflops"] > 0 and doc["ceilings"]["copy_GBps"] > 0
    records = doc["records"]
    assert all(set(r) == RECORD_KEYS for r in records)
    assert {r["gate"] for r in records} <= {"passed", "failed", "unsupported", "error"}
    assert all(r["timed"] is None for r in records)  # attention and reduce_sum offer one call
    assert {r["backend"] for r in records} >= {"reference", "torch", "torch.sum"}
    attention = [r for r in records if r["op"] == "attention"]
    assert len(attention) == 2 * len(workloads("attention", "cpu", quick=True))
    for r in attention:
        assert r["gate"] == "passed" and r["baseline"] == "reference"
        assert r["median_s"] > 0 and r["iqr_s"] >= 0 and r["tflops"] > 0 and r["gbps"] is None
        assert r["fraction_of_ceiling"] == pytest.approx(r["tflops"] / doc["ceilings"]["matmul_tflops"])
        wl = r["workload"]
        assert wl["flops"] == attention_forward_flops(wl["B"], wl["Hq"], wl["Sq"], wl["Sk"], wl["D"], wl["causal"])
        assert r["speedup"] > 0
    assert all(r["speedup"] == 1.0 for r in attention if r["backend"] == "reference")
    assert all(r["peak_extra_bytes"] > 0 for r in attention if r["backend"] == "reference")  # tracemalloc
    assert all(r["peak_extra_bytes"] is None for r in attention if r["backend"] == "torch")  # no CPU probe
    sums = [r for r in records if r["op"] == "reduce_sum"]
    assert all(r["gbps"] > 0 and r["baseline"] == "torch.sum" for r in sums if r["gate"] == "passed")
    assert doc["memory_scaling"] == []


def test_interrupted_run_keeps_its_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.measure
    calls = []

    def measure_then_interrupt(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "measure", measure_then_interrupt)
    out = tmp_path / "bench.json"
    assert main(["--quick", "--device", "cpu", "--backend", "reference", "--op", "softmax_stats",
                 "--output", str(out)]) == 130
    doc = json.loads(out.read_text())
    assert doc["interrupted"] and len(doc["records"]) == 1 and doc["records"][0]["gate"] == "passed"


@pytest.mark.parametrize("factory", ["factory_segfaults", "factory_hangs"])
def test_a_factory_that_crashes_or_hangs_does_not_stop_the_bench(tmp_path: Path, factory: str) -> None:
    """Through the real CLI: the factory is called in a discovery child, listed unavailable with the reason,
    and the other backend is timed."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "reports.command", "bench", "--quick", "--device", "cpu",
                           "--backend", f"tests.hostile:{factory}", "--backend", "reference", "--op", "reduce_sum",
                           "--output", str(out)], capture_output=True, text=True, timeout=400, cwd=ROOT,
                          env=os.environ | {"ATTNSPEC_FACTORY_TIMEOUT": "20", "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    run = read_bench(out, problems := [])
    assert problems == [] and run.finished
    listed = {b.origin: b for b in run.backends}
    hostile = listed[f"--backend tests.hostile:{factory}"]
    assert not hostile.available and ("did not return" if factory == "factory_hangs" else "SIGSEGV") in hostile.reason
    assert {r.backend for r in run.records if r.gate is Status.PASSED} >= {"reference"}


def test_names_and_reasons_are_printed_as_written(tmp_path: Path) -> None:
    """Through the real CLI: an unavailable backend's install hint keeps its ``[liger]`` and a backend named
    ``evil[/bold]name`` appears so in the summary (rich reads neither as markup)."""
    done = subprocess.run([sys.executable, "-m", "reports.command", "bench", "--quick", "--device", "cpu",
                           "--backend", "tests.hostile:markup_names", "--backend",
                           "tests.hostile:unavailable_with_markup", "--op", "reduce_sum", "--output",
                           str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=400, cwd=ROOT,
                          env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "needs pip install 'attnspec[liger]' [bold]now[/bold] :smile:" in " ".join(done.stderr.split())
    assert "evil[/bold]name" in done.stdout and ":factory:" in done.stdout


def test_unknown_backend_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["--backend", "no-such-backend", "--output", str(tmp_path / "x.json")]) == 2


# ------------------------------------------------------------------------------------------------
# Flags


def _timed(backend: str, device: str, median_s: float, baseline: str) -> BenchRecord:
    return BenchRecord(op="reduce_sum", label="n2^16", dtype="float32", device=device, backend=backend,
                       baseline=baseline, median_s=median_s, fraction_of_ceiling=0.5)


def test_a_large_speedup_is_suspicious_on_cuda_only() -> None:
    """A vendor baseline's CPU thread pool loses 10-50x under load: 36x over torch.sum on the CPU is the
    machine's load, not a timing that skipped the work; on CUDA it is flagged."""
    for device in ("cpu", "cuda"):
        records = [_timed("torch.sum", device, 36e-4, "torch.sum"), _timed("mine", device, 1e-4, "torch.sum")]
        bench.add_speedups(records)
        assert records[1].speedup == pytest.approx(36.0)
        flagged = records[1].flag is not None and "36.0x over the vendor baseline torch.sum" in records[1].flag
        assert flagged == (device == "cuda"), records[1]
        assert records[0].flag is None


def test_listing_the_baselines_does_not_import_the_compiler() -> None:
    """Every asv benchmark process lists the baselines; ``torch.compile``'s import (seconds) waits for the
    first KD call of the torch-compile row."""
    script = ("import sys\nfrom benchmarks.baselines import baseline_backends\nbaseline_backends()\n"
              "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
