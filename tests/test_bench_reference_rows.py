"""Every GPU attention row is set beside compiled FlexAttention and SDPA cuDNN (``BenchOp.reference_rows`` of
the attention benchmark operations): the reference rows join the run, each record's ``vs`` holds their median
over its own, and the report's speed table shows it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.baselines import reference_rows_of
from benchmarks.bench import add_speedups, bench_backends
from conformance.codec import read_bench
from conformance.records import BenchRecord
from reports.speed import timing_row


def record(backend: str, median_s: float | None, op: str = "attention", device: str = "cuda") -> BenchRecord:
    return BenchRecord(op=op, backend=backend, device=device, dtype="bfloat16", label="S4096",
                       baseline="torch-flash", median_s=median_s)


def test_vs_is_each_reference_median_over_the_row() -> None:
    records = [record("triton", 2.0), record("flex", 3.0), record("torch-cudnn", 1.0), record("torch-flash", 4.0),
               record("cupy", None)]
    add_speedups(records)
    triton, flex, cudnn, _, cupy = records
    assert triton.vs == {"flex": 1.5, "torch-cudnn": 0.5}
    assert flex.vs == {"flex": 1.0, "torch-cudnn": 1 / 3}
    assert cudnn.vs["flex"] == 3.0
    assert cupy.vs == {}  # not timed: no ratio


def test_rows_without_references_have_none() -> None:
    records = [record("torch", 1.0, device="cpu"), record("reference", 2.0, device="cpu"),
               record("triton", 1.0, op="kd_loss"), record("flex", 1.0, op="kd_loss")]
    add_speedups(records)
    assert all(r.vs == {} for r in records)


def test_reference_rows_join_the_run() -> None:
    """Asked for ``reference`` alone on CUDA attention, the run adds the reference rows it can find (flex is
    registered on every machine; torch-cudnn only where CUDA is), and none on the CPU."""
    for op in ("attention", "attention_backward", "attention_fwd_bwd"):
        assert reference_rows_of(op, "cuda") == ("flex", "torch-cudnn"), op
        assert reference_rows_of(op, "cpu") == (), op
    assert reference_rows_of("kd_loss", "cuda") == reference_rows_of("no such operation", "cuda") == ()
    assert {"reference", "flex"} <= {e.name for e in bench_backends(["reference"], ["attention"], "cuda",
                                                                     isolate=False)}
    assert "flex" not in {e.name for e in bench_backends(["reference"], ["attention"], "cpu", isolate=False)}


def test_report_row_shows_the_ratios(tmp_path: Path) -> None:
    """A bench file's ``vs`` read back and shown in the speed table; a non-number is left out with a problem
    noted, and a record without any (older bench files) shows a dash."""
    path = tmp_path / "bench.json"
    with_vs = {"op": "attention", "backend": "triton", "device": "cuda", "median_s": 2.0,
               "vs": {"flex": 1.5, "torch-cudnn": 0.5, "bad": [1]}}
    path.write_text(json.dumps({"records": [with_vs, {"op": "attention", "backend": "cupy", "device": "cuda"}]}))
    problems: list[str] = []
    first, second = read_bench(path, problems).records
    assert timing_row(first).vs == "flex 1.5×, torch-cudnn 0.5×"
    assert any("vs." in p and "bad" in p for p in problems)
    assert timing_row(second).vs == "—"
