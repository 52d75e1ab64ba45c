"""``attnspec bench -k TEXT``: part of the workload table, by label (benchmarks/bench.py's docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench import parse_args
from benchmarks.workloads import LabelPattern, matching, workloads
from conformance.codec import read_bench
from conformance.results import Status

ROOT = Path(__file__).resolve().parents[1]


def bench_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reports.command", "bench", *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=os.environ | {"COLUMNS": "200"})


def labels(op: str, device: str, *patterns: str) -> list[str]:
    return [w.label for w in matching(workloads(op, device), [LabelPattern.parse(p) for p in patterns])]


def test_patterns_keep_labels_containing_the_text_and_all_must_hold() -> None:
    """On the full GPU table: D64 keeps the 12 D = 64 rows (not D = 128), ignoring case; "not causal" drops the
    causal ones; two -k are ANDed; none keeps all."""
    every = [w.label for w in workloads("attention", "cuda")]
    d64 = labels("attention", "cuda", "D64")
    assert len(every) == 24 and len(d64) == 12 and all("-D64" in label for label in d64)
    assert labels("attention", "cuda", "d64") == d64
    plain = labels("attention", "cuda", "D64", "not causal")
    assert len(plain) == 6 and not any("causal" in label for label in plain)
    assert labels("attention", "cuda", "D64", "S1024") == ["B16H32-S1024-D64", "B16H32-S1024-D64-causal"]
    assert labels("attention", "cuda") == every


@pytest.mark.parametrize("expr", ["", "   ", "not ", "not   "])
def test_an_empty_pattern_is_a_usage_error(expr: str) -> None:
    with pytest.raises(SystemExit) as stop:
        parse_args(["-k", expr])
    assert stop.value.code == 2
    assert parse_args(["-k", "not causal"]).patterns == [LabelPattern("causal", negated=True)]


def test_cli_times_only_the_matching_workloads(tmp_path: Path) -> None:
    """Through the real CLI on the CPU table: only S128 non-causal is gated and timed, for each operation."""
    out = tmp_path / "bench.json"
    done = bench_cli("--quick", "--device", "cpu", "--backend", "reference", "--op", "attention", "--op",
                     "attention_backward", "-k", "S128", "-k", "not causal", "--output", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = read_bench(out, problems := [])
    assert problems == [] and run.finished
    assert sorted((r.op, r.label) for r in run.records) == [("attention", "B2H2-S128-D64"),
                                                            ("attention_backward", "B2H2-S128-D64")]
    assert all(r.gate is Status.PASSED and r.median_s for r in run.records)


def test_cli_refuses_a_selection_that_keeps_nothing(tmp_path: Path) -> None:
    """Exit 2, nothing written, and the message names the selection and some labels to choose from."""
    out = tmp_path / "bench.json"
    done = bench_cli("--quick", "--device", "cpu", "--backend", "reference", "--op", "attention", "-k", "D65",
                     "--output", str(out))
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, text
    assert "-k 'D65' keeps no workload of attention on cpu" in text and "B2H2-S128-D64" in text
    assert not out.exists()


def test_spread_run_gives_no_process_to_an_operation_left_without_workloads(tmp_path: Path) -> None:
    """With --jobs, -k goes to every process; reduce_sum has no S128 workload, so it gets no process (one would
    exit 2) and the merged file holds the attention records alone."""
    out = tmp_path / "bench.json"
    done = bench_cli("--quick", "--device", "cpu", "--backend", "reference", "--op", "attention", "--op",
                     "reduce_sum", "-k", "S128", "--jobs", "2", "--output", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = read_bench(out, problems := [])
    assert problems == [] and run.finished and len(run.parts) == 1
    assert {(r.op, r.label) for r in run.records} == {("attention", "B2H2-S128-D64"),
                                                      ("attention", "B2H2-S128-D64-causal")}
