"""The result records and their one JSON codec (conformance.records, conformance.codec): the committed H200
evidence reads through it, what it writes reads back equal, each record carries the schema version, and a
non-finite number has one spelling in both kinds of file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conformance.codec import (
    SCHEMA_VERSION,
    decode,
    dumps,
    encode,
    encode_bench,
    read_bench,
    read_lines,
    read_text,
    write_bench,
)
from conformance.records import (
    BackendListing,
    BenchRecord,
    BenchRun,
    CaseRecord,
    CaseStart,
    Ended,
    EndRecord,
    MemoryRecord,
    Provenance,
    RunRecord,
)
from conformance.results import BAD, ORDER, STOPPED, Status

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = ROOT / "reports" / "gpu"
#: evidence files of other formats than the conformance JSON lines and the bench JSON (a kernel sweep)
OTHER_FORMATS = {"triton-attention-sweep.json"}


def _conformance_files() -> list[Path]:
    return sorted([*EVIDENCE.glob("*.jsonl"), *EVIDENCE.glob("*.jsonl.gz")])


def _bench_files() -> list[Path]:
    return sorted(p for p in EVIDENCE.glob("*.json") if p.name not in OTHER_FORMATS)


def test_the_evidence_folder_holds_only_known_formats() -> None:
    """A result file added to reports/gpu is one the tests below read (or is named here as another format)."""
    assert _conformance_files() and _bench_files()
    for path in EVIDENCE.glob("*.json"):
        kind = json.loads(path.read_text()).get("kind")
        assert (kind == "bench") == (path.name not in OTHER_FORMATS), path.name


@pytest.mark.parametrize("path", _conformance_files(), ids=lambda p: p.name)
def test_committed_conformance_results_read_through_the_codec(path: Path) -> None:
    """Every line of the schema-1 evidence decodes, with no problem, and reads back equal once re-encoded."""
    records, problems = read_lines(path)
    assert problems == []
    assert len(records) == sum(1 for line in read_text(path).splitlines() if line.strip())
    cases = [r for _, r in records if isinstance(r, CaseRecord)]
    assert cases and all(isinstance(c.status, Status) for c in cases)
    assert any(isinstance(r, RunRecord) and r.provenance.gpu for _, r in records)
    for lineno, record in records:
        again: list[str] = []
        assert decode(json.loads(dumps(record)), f"line {lineno}", again) == record and again == []


@pytest.mark.parametrize("path", _bench_files(), ids=lambda p: p.name)
def test_committed_bench_results_read_through_the_codec(path: Path, tmp_path: Path) -> None:
    """Every committed bench file decodes with no problem but its own note and an interrupted run's line, and
    reads back equal once written again."""
    problems: list[str] = []
    run = read_bench(path, problems)
    assert [p for p in problems if not p.startswith("note: ") and "interrupted" not in p] == []
    raw = json.loads(path.read_text())
    assert len(run.records) == len(raw["records"]) and len(run.memory_scaling) == len(raw["memory_scaling"])
    assert run.ceilings.matmul_tflops and run.ceilings.copy_gbps and run.provenance.gpu
    assert all(r.gate in (Status.PASSED, Status.FAILED, Status.ERROR, Status.UNSUPPORTED) for r in run.records)
    write_bench(tmp_path / "again.json", run)
    assert read_bench(tmp_path / "again.json", []) == run


def _run_record() -> RunRecord:
    return RunRecord(run_id="r1", started="2026-01-01T00:00:00+00:00", pid=7, provenance=Provenance(hostname="h"),
                     argv=["--quick"], quick=True, every_case=False,
                     backends=[BackendListing("b", "built-in", True, None, "what b is", {"devices": ["cpu"]})])


def test_every_record_carries_the_schema_and_reads_back_equal() -> None:
    start = CaseStart("ATT-1[b-cpu-x]", "ATT-1", "b", "cpu", "float32", "attention", "x", 3, "python -m pytest x")
    case = CaseRecord.ended(start, Status.FAILED, "wrong", 0.5)
    end = EndRecord("r1", "2026-01-01T00:01:00+00:00", Ended.COMPLETED, None, 1, {Status.FAILED: 1})
    for record in (_run_record(), start, case, end):
        line = json.loads(dumps(record))
        assert line["schema"] == SCHEMA_VERSION
        assert decode(line, "x", []) == record
    assert json.loads(dumps(_run_record()))["kind"] == "run"
    assert json.loads(dumps(RunRecord("r1", resumed=True)))["kind"] == "resume"
    assert encode(case)["area"] == "ATT" and encode(case)["status"] == "failed"
    assert encode_bench(BenchRun())["schema"] == SCHEMA_VERSION


def test_a_schema_this_reader_does_not_know_is_noted_and_read() -> None:
    line = encode(CaseRecord("A-1[b-cpu]", "A-1", "b", "cpu", Status.PASSED)) | {"schema": SCHEMA_VERSION + 1}
    problems: list[str] = []
    assert decode(line, "line 1", problems) == CaseRecord("A-1[b-cpu]", "A-1", "b", "cpu", Status.PASSED)
    assert len(problems) == 1 and f"schema {SCHEMA_VERSION + 1}" in problems[0]
    line.pop("schema")  # schema 1: written before the field existed
    assert decode(line, "line 1", problems := []) is not None and problems == []


def test_non_finite_numbers_have_one_spelling_in_both_files(tmp_path: Path) -> None:
    """An infinite error in a case and an infinite or NaN figure in a bench record are written as the same
    strings, and read back as the same numbers."""
    case = CaseRecord("A-1[b-cpu]", "A-1", "b", "cpu", Status.FAILED, err=math.inf, ratio=-math.inf,
                      metrics={"spread": math.nan, "nested": [math.inf]})
    line = json.loads(dumps(case))
    assert (line["err"], line["ratio"], line["metrics"]) == ("inf", "-inf", {"spread": "nan", "nested": ["inf"]})
    back = decode(line, "x", [])
    assert back.err == math.inf and back.ratio == -math.inf
    record = BenchRecord("attention", "b", "cpu", "float32", speedup=math.inf, errors={"out": math.nan})
    memory = MemoryRecord("b", "attention", "cpu", S=[1.0, 2.0], peak_extra_bytes=[math.inf, None])
    write_bench(tmp_path / "b.json", BenchRun(device="cpu", records=[record], memory_scaling=[memory]))
    text = json.loads((tmp_path / "b.json").read_text())
    assert text["records"][0]["speedup"] == "inf" and text["records"][0]["errors"] == {"out": "nan"}
    assert text["memory_scaling"][0]["peak_extra_bytes"] == ["inf", None]
    run = read_bench(tmp_path / "b.json", [])
    assert run.records[0].speedup == math.inf and math.isnan(run.records[0].errors["out"])


def test_a_status_comes_from_the_status_field_only() -> None:
    """A reason that reads like another status does not change the case's status."""
    line = encode(CaseRecord("A-1[b-cpu]", "A-1", "b", "cpu", Status.PASSED, reason="unsupported: xfail"))
    assert decode(line, "x", []).status is Status.PASSED
    problems: list[str] = []
    assert decode(line | {"status": "unsupported: no"}, "x", problems) is None and "status" in problems[0]


def test_severity_and_bad_are_defined_once_on_the_enum() -> None:
    assert ORDER[0] is Status.CRASHED and [s.severity for s in ORDER] == list(range(len(ORDER)))
    assert {s for s in Status if s.bad} == BAD == STOPPED | {Status.ERROR, Status.FAILED}
    assert all(s.severity < Status.PASSED.severity for s in BAD)
