"""The conformance runner tells the truth: each test drives the real CLI (``python -m conformance.cli``) with a
hostile backend from tests/hostile.py and checks the exit status, the records and what the console says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conformance.records import CaseRecord
from conformance.results import Status
from conformance.verdicts import verdict_table
from tests.hostile import PIDS_FILE

ROOT = Path(__file__).resolve().parent.parent
#: the cases of one backend in these tests: WD-0's sizes, one of which (n = 7) triggers the hostile act
CLAUSE = ["--clause", "WD-0"]


def attnspec(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``attnspec ARGS`` through the real CLI, not on a terminal, 200 columns wide."""
    return subprocess.run([sys.executable, "-m", "conformance.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"COLUMNS": "200"} | (env or {}))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cases(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records(path) if r.get("kind") == "case"}


def conformance(tmp_path: Path, backend: str, *extra: str, timeout: float = 180) -> tuple[
        subprocess.CompletedProcess[str], Path]:
    results = tmp_path / "r.jsonl"
    done = attnspec("conformance", "--backend", f"tests.hostile:{backend}", "--results", str(results), *CLAUSE,
                    "--case-timeout", "2", *extra, timeout=timeout)
    return done, results


def assert_every_started_case_has_a_result(results: Path) -> None:
    recs = records(results)
    started = {r["id"] for r in recs if r.get("kind") == "start"}
    finished = Counter(r["id"] for r in recs if r.get("kind") == "case")
    assert len(started) >= 5 and set(finished) == started and max(finished.values()) == 1, finished


# -- exit status and summaries ------------------------------------------------------------------------

def test_failing_spec_backend_exits_1_and_is_counted_by_its_name(tmp_path: Path) -> None:
    done, results = conformance(tmp_path, "wrong")
    assert done.returncode == 1, done.stdout
    n = len(cases(results))
    assert f"wrong-sum: {n} cases, 1 bad (1 failed, {n - 1} passed)" in done.stdout, done.stdout


def test_repro_command_reproduces_the_failing_case(tmp_path: Path) -> None:
    done, results = conformance(tmp_path, "wrong")
    failed = [r for r in cases(results).values() if r["status"] == "failed"]
    assert len(failed) == 1 and all(r.get("repro") is None for r in cases(results).values() if r["status"] == "passed")
    repro = failed[0]["repro"]
    assert repro.startswith("python -m pytest ")
    again = subprocess.run(repro.replace("python", sys.executable, 1) + " -rf", shell=True, cwd=ROOT,
                           capture_output=True, text=True, timeout=180)
    assert again.returncode == 1, again.stdout
    assert "1 failed" in again.stdout and "passed" not in again.stdout.splitlines()[-1], again.stdout[-2000:]
    assert failed[0]["id"].removeprefix("WD-0") in again.stdout  # the node id holds the case's parameters


def test_a_selection_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    done, results = conformance(tmp_path, "wrong", "-k", "no_such_test")
    assert done.returncode == 2, done.stdout
    assert "matches no case" in done.stdout and not cases(results)


def test_clause_ids_select_in_k_and_clause(tmp_path: Path) -> None:
    results = tmp_path / "k.jsonl"
    done = attnspec("conformance", "--backend", "tests.hostile:markup_names", "--results", str(results), "-k", "WD-1")
    assert done.returncode == 0, done.stdout
    assert {r["clause"] for r in cases(results).values()} == {"WD-1"}
    done = attnspec("conformance", "--backend", "tests.hostile:wrong", "--clause", "WD-99")
    assert done.returncode == 2 and "unknown --clause WD-99" in done.stdout


def test_bad_arguments_fail_at_once_with_the_cause(tmp_path: Path) -> None:
    started = time.monotonic()
    done, results = conformance(tmp_path, "wrong", "--xfails-file", "/nonexistent")
    assert done.returncode == 2 and "cannot read --xfails-file /nonexistent" in done.stdout, done.stdout
    assert time.monotonic() - started < 60 and not results.exists()  # refused once, not retried


def test_a_child_that_stops_before_any_case_shows_why_on_the_console(tmp_path: Path) -> None:
    done, results = conformance(tmp_path, "wrong", "-k", "(")
    assert done.returncode == 1, done.stdout
    assert "stopped before finishing" in done.stdout and "Wrong expression passed to '-k'" in done.stdout


# -- the supervisor survives every way a backend process can die --------------------------------------

@pytest.mark.parametrize("code", [0, 1, 2, 3, 5])
def test_exit_in_a_case_is_a_crash_and_the_run_goes_on(tmp_path: Path, code: int) -> None:
    done, results = conformance(tmp_path, f"exits_{code}")
    assert done.returncode == 1, done.stdout
    crashed = {i: r["reason"] for i, r in cases(results).items() if r["status"] == "crashed"}
    assert crashed == {f"WD-0[exits-{code}-cpu-float32-1x7]": f"the backend's process exited with status {code}"}
    assert_every_started_case_has_a_result(results)
    assert records(results)[-1]["kind"] == "end" and records(results)[-1]["ended"] == "completed"


def test_keyboard_interrupt_raised_by_a_backend_fails_its_case(tmp_path: Path) -> None:
    done, results = conformance(tmp_path, "raises_interrupt")
    assert done.returncode == 1, done.stdout
    case = cases(results)["WD-0[raises-interrupt-cpu-float32-1x7]"]
    assert case["status"] == "failed" and "KeyboardInterrupt" in case["reason"]
    assert_every_started_case_has_a_result(results)
    assert records(results)[-1]["ended"] == "completed"


def test_hang_holding_the_gil_is_timed_out_by_the_supervisor(tmp_path: Path) -> None:
    started = time.monotonic()
    done, results = conformance(tmp_path, "holds_gil", timeout=400)
    assert done.returncode == 1, done.stdout
    case = cases(results)["WD-0[holds-gil-cpu-float32-1x7]"]
    assert case["status"] == "timeout" and "killed" in case["reason"], case
    assert_every_started_case_has_a_result(results)
    assert time.monotonic() - started < 300  # the backend sleeps for an hour: bounded by the deadline, not by it


def _wait_for_case_in_flight(results: Path, proc: subprocess.Popen[str]) -> int:
    """The pid of the pytest child once it has started a case."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        recs = records(results) if results.exists() else []
        if any(r.get("kind") == "start" for r in recs):
            return next(r["pid"] for r in recs if r.get("kind") == "run")
        time.sleep(0.2)
    raise AssertionError(f"no case started: {proc.communicate(timeout=10)}")


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (no such process, or a zombie left for init to reap)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def _start_hanging_run(results: Path, backend: str = "hangs_first",
                       env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "conformance.cli", "conformance", "--backend",
                             f"tests.hostile:{backend}", "--results", str(results), *CLAUSE],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | (env or {}))


def _pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_child_dies_with_its_parent(tmp_path: Path, sig: signal.Signals) -> None:
    results = tmp_path / "r.jsonl"
    proc = _start_hanging_run(results)
    child = _wait_for_case_in_flight(results, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert _gone(child), f"pytest child {child} outlived its parent"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, out
        assert "interrupted (SIGTERM)" in out
        assert cases(results)["WD-0[hangs-first-cpu-float32-1x1]"]["status"] == "interrupted"


def test_what_a_backend_starts_dies_with_the_run_killed_outright(tmp_path: Path) -> None:
    """SIGKILL to attnspec: its pytest child dies with it, and so does the process the backend started there
    (the child's process group is reaped)."""
    pids = tmp_path / "pids"
    proc = _start_hanging_run(tmp_path / "r.jsonl", "spawns_then_hangs", {PIDS_FILE: str(pids)})
    child = _wait_for_case_in_flight(tmp_path / "r.jsonl", proc)
    deadline = time.monotonic() + 60
    while not _pids(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=60)
    assert _gone(child) and _pids(pids)
    assert all(_gone(pid) for pid in _pids(pids)), f"the backend's process {_pids(pids)} outlived the run"


def test_the_results_lock_is_removed_when_the_run_ends(tmp_path: Path) -> None:
    """The lock file goes when the run ends, with results or with an error."""
    done, results = conformance(tmp_path, "wrong")
    lock = results.with_name(results.name + ".lock")
    assert done.returncode == 1 and results.exists() and not lock.exists(), done.stdout
    refused = attnspec("conformance", "--backend", "no-such-backend", "--results", str(results))
    assert refused.returncode == 2 and not lock.exists(), refused.stdout


def test_a_second_run_on_the_same_results_file_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    first = _start_hanging_run(results)
    try:
        _wait_for_case_in_flight(results, first)
        second = attnspec("conformance", "--backend", "tests.hostile:wrong", "--results", str(results), *CLAUSE)
        assert second.returncode == 2 and "is being written by another run" in second.stdout, second.stdout
        assert [r["kind"] for r in records(results)][:2] == ["run", "start"]  # the first run's records are kept
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


# -- discovery in a child process -----------------------------------------------------------------------

def test_factories_that_end_their_process_are_listed_unavailable() -> None:
    done = attnspec("backends", "--backend", "tests.hostile:factory_exits", "--backend",
                    "tests.hostile:factory_segfaults", "--backend", "tests.hostile:factory_os_exit", "--backend",
                    "tests.thirdparty:good")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sys.exit(7)" in done.stdout and "SIGSEGV" in done.stdout and "exited with status 9" in done.stdout
    assert "thirdparty-sum" in done.stdout and "reference-tiled" in done.stdout


def test_a_process_a_factory_starts_ends_with_discovery(tmp_path: Path) -> None:
    """The factory's process holds the discovery child's output pipes: discovery ends anyway, and the
    process with it."""
    pids = tmp_path / "pids"
    started = time.monotonic()
    done = attnspec("backends", "--backend", "tests.hostile:factory_spawns", env={PIDS_FILE: str(pids)}, timeout=300)
    assert done.returncode == 0 and "spawned" in done.stdout, done.stdout
    assert time.monotonic() - started < 240  # the process sleeps for 600 s
    assert _pids(pids) and all(_gone(pid) for pid in _pids(pids))


def test_a_factory_that_hangs_is_listed_unavailable() -> None:
    done = attnspec("backends", "--backend", "tests.hostile:factory_hangs", "--backend", "tests.thirdparty:good",
                    env={"ATTNSPEC_FACTORY_TIMEOUT": "8"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "did not return within 8 s" in done.stdout and "thirdparty-sum" in done.stdout


def test_a_crashing_factory_not_asked_for_does_not_stop_a_run(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    done = attnspec("conformance", "--backend", "tests.thirdparty:good", "--results", str(results), *CLAUSE,
                    env={"ATTNSPEC_BACKENDS": "tests.hostile:factory_segfaults"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert cases(results) and {r["backend"] for r in cases(results).values()} == {"thirdparty-sum"}


def test_an_unimportable_backend_spec_is_an_error() -> None:
    done = attnspec("backends", "--backend", "no_such_module_xyz:factory")
    assert done.returncode == 1 and "importable" in done.stdout, done.stdout


# -- names are text, the listing is compact --------------------------------------------------------------

def test_names_are_printed_as_text_and_backends_share_the_run_start(tmp_path: Path) -> None:
    listed = attnspec("backends", "--backend", "tests.hostile:markup_names")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "evil[/bold]name" in listed.stdout and ":factory:" in listed.stdout
    results = tmp_path / "r.jsonl"
    done = attnspec("conformance", "--backend", "tests.hostile:markup_names", "--backend", "tests.thirdparty:good",
                    "--results", str(results), *CLAUSE, "--progress-interval", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "evil[/bold]name@cpu" in done.stdout and ":factory:@cpu" in done.stdout
    assert "[1/2] evil[/bold]name, :factory:: " in done.stdout  # plain progress lines: the output is not a terminal
    recs = records(results)
    runs = [r for r in recs if r.get("kind") == "run"]
    assert len(runs) == 2 and runs[0]["started"] == runs[1]["started"]  # two children, one run start
    ids = [r["id"] for r in recs if r.get("kind") == "case"]
    assert len(ids) == len(set(ids))  # one factory's two backends ran once, in one child


def test_backends_listing_is_compact_with_details_on_request() -> None:
    compact = attnspec("backends", env={"COLUMNS": "80"})
    assert compact.returncode == 0 and "NumPy float64" in compact.stdout  # Backend.description is shown
    assert len(compact.stdout.splitlines()) < 60 and "notes:" not in compact.stdout
    verbose = attnspec("backends", "--verbose")
    assert "notes:" in verbose.stdout and "ops: attention" in verbose.stdout


def test_a_cell_where_nothing_passed_is_not_ok() -> None:
    recs = [CaseRecord(f"GRAD-1[b-cpu-{i}]", "GRAD-1", "b", "cpu", Status.NOT_IMPLEMENTED) for i in range(36)]
    assert "none 0/36 (36 n/i)" in verdict_table(recs)[1]
    recs += [CaseRecord("GRAD-1[b-cpu-x]", "GRAD-1", "b", "cpu", Status.INTERRUPTED)]
    assert "FAIL 1/37" in verdict_table(recs)[1]
