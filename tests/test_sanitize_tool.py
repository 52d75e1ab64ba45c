"""The compute-sanitizer driver (``benchmarks/kernel_tools/sanitize_cupy.py``) through its command line, with a
stand-in ``compute-sanitizer`` on PATH that prints what the real one prints: a clean run passes; an error the
sanitizer counts, a run that stops before its last call, a run that hangs and an unknown tool each fail, and
the JSON says which and why."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interrupting import interrupt_once_started

ROOT = Path(__file__).resolve().parents[1]

#: the stand-in: echoes the tool and the allocator setting it was run with, then behaves as FAKE_MODE says
FAKE = """#!/usr/bin/env bash
echo "call: tool=$2 caching_off=${PYTORCH_NO_CUDA_MEMORY_CACHING:-unset}"
case "$FAKE_MODE-$2" in
  clean-racecheck) echo "calls: done"; echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)" ;;
  clean-*) echo "calls: done"; echo "========= ERROR SUMMARY: 0 errors" ;;
  race-*) echo "========= Warning: Race reported between Write access at attn_fwd+0x1a0"; echo "calls: done"
          echo "========= RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)" ;;
  errors-*) echo "========= Invalid __global__ read of size 16 bytes"; echo "calls: done"
          echo "========= ERROR SUMMARY: 2 errors" ;;
  crash-*) echo "Traceback (most recent call last):" >&2; echo "========= ERROR SUMMARY: 0 errors"; exit 1 ;;
  hang-*) sleep 60 ;;
  sleep-*) echo $$ > "$FAKE_PID"; sleep 3600 ;;
esac
"""


def fake_sanitizer_env(tmp_path: Path, mode: str) -> dict[str, str]:
    """An environment whose PATH finds the stand-in, behaving as ``mode`` says."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "compute-sanitizer"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_MODE": mode}


def run_tool(tmp_path: Path, mode: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "sanitize.json"
    env = fake_sanitizer_env(tmp_path, mode)
    result = subprocess.run([sys.executable, "-m", "benchmarks.kernel_tools.sanitize_cupy", "--out", str(out), *args],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    return result, json.loads(out.read_text()) if out.exists() else {}


def test_clean_run_passes_and_names_its_provenance(tmp_path: Path) -> None:
    result, data = run_tool(tmp_path, "clean", "--tools", "memcheck,racecheck")
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["provenance"]["commit"]
    for tool in ("memcheck", "racecheck"):
        record = data[tool]
        assert record["errors"] == 0 and record["warnings"] == 0 and record["finished"]
        assert record["exit_status"] == 0
        assert record["calls"] == [f"tool={tool} caching_off=1"]
        assert "report" not in record


def test_counted_errors_fail_with_the_report_kept(tmp_path: Path) -> None:
    result, data = run_tool(tmp_path, "errors", "--tools", "memcheck")
    assert result.returncode == 1
    assert data["memcheck"]["errors"] == 2 and data["memcheck"]["finished"]
    assert "========= Invalid __global__ read of size 16 bytes" in data["memcheck"]["report"]


def test_racecheck_warnings_fail(tmp_path: Path) -> None:
    """racecheck counts a hazard of warning severity apart from errors, in a summary of its own."""
    result, data = run_tool(tmp_path, "race", "--tools", "racecheck")
    assert result.returncode == 1
    record = data["racecheck"]
    assert record["errors"] == 0 and record["warnings"] == 1 and record["finished"]
    assert any("Race reported" in line for line in record["report"])


def test_a_run_that_stops_early_fails_although_no_error_was_counted(tmp_path: Path) -> None:
    result, data = run_tool(tmp_path, "crash", "--tools", "initcheck")
    assert result.returncode == 1
    record = data["initcheck"]
    assert record["errors"] == 0 and not record["finished"] and record["exit_status"] == 1
    assert any("Traceback" in line for line in record["report"])


def test_a_hung_run_is_stopped_at_its_limit(tmp_path: Path) -> None:
    result, data = run_tool(tmp_path, "hang", "--tools", "synccheck", "--seconds", "2")
    assert result.returncode == 1
    record = data["synccheck"]
    assert record["exit_status"] is None and not record["finished"] and record["errors"] is None
    assert record["seconds"] < 30


def test_an_interrupt_stops_the_sanitizer_and_is_recorded(tmp_path: Path) -> None:
    """The step's limit (SIGINT) reaches the driver even when it was started with SIGINT ignored; the
    sanitizer's session is killed and the tool recorded as interrupted."""
    pid_file, out = tmp_path / "sanitizer.pid", tmp_path / "sanitize.json"
    env = {**fake_sanitizer_env(tmp_path, "sleep"), "FAKE_PID": str(pid_file)}
    done = interrupt_once_started([sys.executable, "-m", "benchmarks.kernel_tools.sanitize_cupy", "--out", str(out),
                                   "--tools", "racecheck,memcheck"], env, ROOT, pid_file)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not done.child_alive
    data = json.loads(out.read_text())
    assert data["racecheck"]["interrupted"] and not data["racecheck"]["finished"] and "memcheck" not in data


@pytest.mark.parametrize("args, message", [(("--tools", "memcheck,leakcheck"), "unknown tool(s) leakcheck"),
                                           (("--seconds", "-1"), "must be positive")])
def test_bad_arguments_are_refused(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result, data = run_tool(tmp_path, "clean", *args)
    assert result.returncode == 2 and message in result.stderr and not data
