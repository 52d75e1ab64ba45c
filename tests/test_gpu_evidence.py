"""The committed GPU evidence is data only, small, consistent with its README, and never installed; the
packing script loses no result; the kernel tools answer ``--help`` without CuPy or a GPU."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conformance.codec import read_text

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "reports" / "gpu"
PACK = ROOT / ".ci" / "pack_evidence.py"
#: data files: bench JSON, conformance JSON lines (committed gzip-compressed by .ci/pack_evidence.py)
DATA_SUFFIXES = (".json", ".jsonl", ".jsonl.gz")


def tracked(folder: Path) -> list[Path]:
    """The files git tracks under ``folder`` (what a clone holds)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--", str(folder.relative_to(ROOT))], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listing.split("\0") if name]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]


def test_evidence_is_data_only_and_under_one_megabyte() -> None:
    files = tracked(EVIDENCE)
    assert files, "reports/gpu holds no tracked file"
    readme = EVIDENCE / "README.md"
    not_data = [str(p.relative_to(ROOT)) for p in files if not p.name.endswith(DATA_SUFFIXES) and p != readme]
    assert not not_data, f"reports/gpu holds files that are not data: {not_data[:5]}"
    size = sum(p.stat().st_size for p in files)
    assert size < 1_000_000, f"reports/gpu holds {size} bytes"


def test_readme_conformance_table_matches_the_records() -> None:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for rec in records(EVIDENCE / "conformance.jsonl.gz"):
        if rec.get("kind") == "case":
            counts[rec["backend"]][rec["status"]] += 1
    section = (EVIDENCE / "README.md").read_text(encoding="utf-8").split("## Conformance", 1)[1].split("##", 1)[0]
    rows = re.findall(r"^\| ([\w-]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+)", section, flags=re.MULTILINE)
    assert {name for name, *_ in rows} == set(counts)
    for name, passed, xfail, unsupported, not_implemented in rows:
        got = counts[name]
        assert (got["passed"], got["xfail"], got["unsupported"], got["not_implemented"]) == (
            int(passed), int(xfail), int(unsupported), int(not_implemented)), name
        assert sum(got.values()) == int(passed) + int(xfail) + int(unsupported) + int(not_implemented), (
            f"{name} has cases of a status the README's table leaves out: {dict(got)}")


def test_every_xfail_in_the_evidence_is_a_listed_finding() -> None:
    """Each xfail of the evidence is written, with its finding, in a file of conformance/xfails/."""
    listed = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "conformance" / "xfails").glob("*.txt"))
    reasons = {line.partition("#")[2].strip() for line in listed.splitlines() if line.partition("#")[0].strip()}
    xfails = [r for path in sorted(EVIDENCE.glob("*.jsonl.gz")) for r in records(path) if r.get("status") == "xfail"]
    assert xfails
    assert {r["reason"] for r in xfails} <= reasons


def run_pack(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PACK), str(folder)], capture_output=True, text=True, timeout=60)


def write_lines(path: Path, items: list[object]) -> None:
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))


def start(case_id: str) -> dict:
    return {"kind": "start", "id": case_id, "backend": "b", "clause": case_id.split("[")[0]}


def case(case_id: str, status: str = "passed") -> dict:
    return {**start(case_id), "kind": "case", "status": status, "err": float("nan")}


def test_pack_drops_only_answered_starts(tmp_path: Path) -> None:
    run = {"kind": "run", "run_id": "r1", "provenance": {"gpu": "H200"}}
    lines = [
        run,
        start("A[1]"), case("A[1]"),           # answered: the start goes
        start("A[2]"),                          # never answered in its run: stays (read as interrupted)
        "not json {",                           # kept verbatim
        [1, 2],                                 # JSON but not a record: kept verbatim
        {"kind": "resume", "run_id": "r1"},
        case("A[2]", "crashed"),                # a result in a later run does not answer the earlier start
        start("A[3]"), start("A[3]"), case("A[3]", "failed"),  # started twice: the result answers both
        {"kind": "end", "run_id": "r1"},
    ]
    write_lines(tmp_path / "conformance.jsonl", lines)
    (tmp_path / "bench.json").write_text(json.dumps({"kind": "bench", "records": [{"median_s": 1e-3}]}, indent=2))
    (tmp_path / "notes.json").write_text("{not json")
    result = run_pack(tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "conformance.jsonl").exists()
    out = read_text(tmp_path / "conformance.jsonl.gz").splitlines()
    assert "not json {" in out and "[1, 2]" in out
    parsed = [json.loads(line) for line in out if line.startswith("{")]
    starts = [r["id"] for r in parsed if r["kind"] == "start"]
    assert starts == ["A[2]"]
    assert [(r["id"], r["status"]) for r in parsed if r["kind"] == "case"] == [
        ("A[1]", "passed"), ("A[2]", "crashed"), ("A[3]", "failed")]
    assert parsed[0] == run and str(parsed[1]["err"]) == "nan"
    assert json.loads((tmp_path / "bench.json").read_text()) == {"kind": "bench", "records": [{"median_s": 1e-3}]}
    assert (tmp_path / "notes.json").read_text() == "{not json"
    packed = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert run_pack(tmp_path).returncode == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == packed, "packing twice changed the files"


def test_pack_drops_only_what_readers_derive(tmp_path: Path) -> None:
    """Null fields, ``area`` and a backend listing an earlier run record holds identically go; floats keep six
    significant digits; a listing that differs stays."""
    listing = {"name": "b", "available": True, "capabilities": {"dtypes": ["float32"]}}
    changed = {**listing, "capabilities": {"dtypes": ["bfloat16"]}}
    lines = [
        {"kind": "run", "run_id": "r1", "backends": [listing]},
        {**case("A[1]"), "area": "A", "err": 1.234567891e-05, "reason": None, "metrics": {"peak": [2.718281828]}},
        {"kind": "run", "run_id": "r2", "backends": [listing, changed]},
    ]
    write_lines(tmp_path / "conformance.jsonl", lines)
    assert run_pack(tmp_path).returncode == 0
    first, packed, second = (json.loads(line) for line in read_text(tmp_path / "conformance.jsonl.gz").splitlines())
    assert first["backends"] == [listing] and second["backends"] == [changed]
    assert "area" not in packed and "reason" not in packed
    assert packed["err"] == 1.23457e-05 and packed["metrics"] == {"peak": [2.71828]}
    assert packed["clause"] == "A" and packed["status"] == "passed"


def test_pack_refuses_a_missing_folder(tmp_path: Path) -> None:
    result = run_pack(tmp_path / "absent")
    assert result.returncode != 0 and "OUTDIR" in result.stderr


@pytest.mark.parametrize("tool", ["bench_triton", "bench_cupy", "bench_variants", "sanitize_cupy", "launch_cupy",
                                  "profile_kernels"])
def test_kernel_tool_help(tool: str) -> None:
    result = subprocess.run([sys.executable, "-m", f"benchmarks.kernel_tools.{tool}", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")


def test_kernel_tool_records_its_provenance(tmp_path: Path) -> None:
    """A kernel tool's JSON names the commit, versions and device it measured (here: the fp8 section of
    bench_variants on small shapes, Triton's interpreter)."""
    out = tmp_path / "variants.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.kernel_tools.bench_variants", "--small",
                             "--sections", "fp8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert data["provenance"]["commit"] == head
    assert data["provenance"]["torch"] and data["provenance"]["triton"]
    assert data["fp8"], "the section ran no row"


def test_wheel_ships_no_evidence(tmp_path: Path) -> None:
    """Built from the tracked files only, so that nothing left over in the checkout (build/) can hide it."""
    source = tmp_path / "src"
    for path in tracked(ROOT):
        if path.is_file():
            target = source / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "conformance/SPEC.md" in names and "benchmarks/kernel_tools/bench_cupy.py" in names
    assert not [n for n in names if n.startswith("reports/gpu/")]
