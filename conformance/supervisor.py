"""Runs the conformance suite with each backend in a subprocess of its own.

A backend can end its process in any way: a segfault, ``os._exit(n)`` with any status, a hang that holds the
GIL. The supervisor never infers what happened from the exit status: after every exit it looks at what the
child wrote. A ``start`` record with no result is the case in flight: it is recorded ``crashed`` (or
``timeout`` when the supervisor killed the child for running past its deadline) and the run restarts with
``--resume`` for the remaining cases. The run has finished only when the child wrote its ``end`` record.

Deadlines: the child's own watchdog records a case ``timeout`` after ``--case-timeout`` seconds; a hang that
holds the GIL stops that watchdog too, so the supervisor keeps its own deadline per case (first seen + timeout
+ grace), kills the child's process group and records ``timeout``. The child is in a session of its own and
dies with its parent (``PR_SET_PDEATHSIG`` on Linux); on SIGINT or SIGTERM the supervisor interrupts it, records
the case in flight ``interrupted`` and re-raises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from conformance.codec import decode
from conformance.records import CaseRecord, CaseStart, ConformanceRecord, Ended, EndRecord, RunRecord
from conformance.results import Status
from conformance.results_file import append_line

CONFORMANCE_DIR = Path(__file__).resolve().parent
#: seconds between two looks at the child and its results
POLL_S = 0.25
#: seconds an interrupted child gets to write its end record before it is killed
STOP_GRACE_S = 10.0


def grace_s(case_timeout: float) -> float:
    """How long past ``--case-timeout`` the supervisor waits for the child's own watchdog before killing it."""
    return 2.0 + 0.1 * case_timeout


class Outcome(str, Enum):
    """How one backend's run ended."""

    FINISHED = "finished"  # the child wrote its end record: every selected case has a result
    INTERRUPTED = "interrupted"  # a real SIGINT / SIGTERM stopped it
    ABORTED = "aborted"  # the child stopped outside any case and a restart would not get further


@dataclass
class RunProgress:
    """What the supervisor has read of one backend's run: results by status, the case in flight, the end."""

    statuses: Counter[Status] = field(default_factory=Counter)
    open_cases: dict[str, tuple[CaseStart, float]] = field(default_factory=dict)
    end: EndRecord | None = None

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())

    @property
    def bad(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.bad)

    def in_flight(self) -> tuple[CaseStart, float] | None:
        """The latest start record with no result, and when the supervisor first saw it."""
        return next(reversed(self.open_cases.values()), None)

    def take(self, records: list[ConformanceRecord], seen_at: float) -> None:
        for rec in records:
            if isinstance(rec, CaseStart):
                self.open_cases[rec.id] = (rec, seen_at)
            elif isinstance(rec, CaseRecord):
                self.open_cases.pop(rec.id, None)
                self.statuses[rec.status] += 1
            elif isinstance(rec, EndRecord):
                self.end = rec
            elif isinstance(rec, RunRecord):
                self.end = None


@dataclass
class BackendRun:
    """What happened to one backend's subprocess runs."""

    backend: str
    run_id: str
    log: Path
    progress: RunProgress = field(default_factory=RunProgress)
    outcome: Outcome | None = None
    #: why the run was aborted, for the console
    problem: str | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    crashed_ids: list[str] = field(default_factory=list)
    timed_out_ids: list[str] = field(default_factory=list)


class RecordTail:
    """Reads the complete JSON lines appended to a results file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[ConformanceRecord]:
        """The records of the complete lines appended since the last read (a line cut by a crash, or one that
        is not a record, is skipped)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(obj, dict) and (record := decode(obj, "", [])) is not None:
                records.append(record)
        return records


def in_flight(records: list[ConformanceRecord], run_id: str) -> CaseStart | None:
    """The last ``start`` record of ``run_id`` that has no result: the case a dead process was running."""
    current = False
    started: dict[str, CaseStart] = {}
    for rec in records:
        if isinstance(rec, RunRecord):
            current = rec.run_id == run_id
        elif current and isinstance(rec, CaseStart):
            started[rec.id] = rec
        elif current and isinstance(rec, CaseRecord):
            started.pop(rec.id, None)
    return list(started.values())[-1] if started else None


def describe_exit(code: int) -> str:
    """``exited with status 3`` or ``killed by SIGSEGV``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _death_signal_setter() -> Callable[[], None] | None:
    """A function for the child before exec: the kernel sends it SIGKILL when the supervisor dies (Linux's
    ``PR_SET_PDEATHSIG``). Resolved here, in the parent, so the forked child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL)


#: ``preexec_fn`` of every child the runner starts: it dies with its parent (None off Linux)
DIE_WITH_PARENT = _death_signal_setter()


def _spawn(cmd: list[str], log: Any, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                            start_new_session=True, preexec_fn=DIE_WITH_PARENT)


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass




def run_backend(
    backend: str,
    results: Path,
    pytest_args: list[str],
    *,
    case_timeout: float,
    log_dir: Path,
    on_poll: Callable[[RunProgress], None] | None = None,
    env: dict[str, str] | None = None,
) -> BackendRun:
    """Run the suite for one backend, restarting after every death in a case, until the child writes its
    end record (or stops outside any case without getting further). ``KeyboardInterrupt`` (SIGINT, or
    SIGTERM turned into it by the caller) stops the child, records its case in flight ``interrupted`` and
    is re-raised."""
    run = BackendRun(backend, uuid.uuid4().hex[:12], log=log_dir / f"{_safe(backend)}.log")
    log_dir.mkdir(parents=True, exist_ok=True)
    tail = RecordTail(results)
    while True:
        cmd = [sys.executable, "-m", "pytest", str(CONFORMANCE_DIR), "--backend", backend, "--results",
               str(results), "--run-id", run.run_id, f"--case-timeout={case_timeout}", "-p", "no:cacheprovider",
               "-q", "-rN", "--reap-group", *pytest_args] + (["--resume"] if run.restarts else [])
        cases_before = run.progress.cases
        with open(run.log, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = _spawn(cmd, log, env)
            try:
                killed_late = _watch(proc, tail, run.progress, case_timeout, on_poll)
            except BaseException:
                _stop(proc, tail, run.progress, results)
                raise
        code = proc.returncode
        run.exit_codes.append(code)
        run.progress.take(tail.read(), time.monotonic())
        flight = run.progress.in_flight()
        if flight is not None:
            start, seen_at = flight
            if killed_late:
                limit = case_timeout + grace_s(case_timeout)
                append_line(results, CaseRecord.ended(
                    start, Status.TIMEOUT, f"no result after {limit:g} s; the process did not respond and was killed",
                    round(time.monotonic() - seen_at, 3)))
                run.timed_out_ids.append(start.id)
            else:
                append_line(results, CaseRecord.ended(start, Status.CRASHED,
                                                      f"the backend's process {describe_exit(code)}", None))
                run.crashed_ids.append(start.id)
            run.progress.take(tail.read(), time.monotonic())
        elif run.progress.end is not None:
            ended = run.progress.end.ended
            run.outcome = Outcome.INTERRUPTED if ended is Ended.INTERRUPTED else Outcome.FINISHED
            if ended not in (Ended.COMPLETED, Ended.INTERRUPTED):
                how = ended.value if ended else "no end status"
                run.outcome, run.problem = Outcome.ABORTED, f"pytest ended with exit status {code} ({how})"
            return run
        elif run.progress.cases == cases_before:
            run.outcome = Outcome.ABORTED
            run.problem = f"the process {describe_exit(code)} outside any case"
            return run
        run.restarts += 1


def _watch(proc: subprocess.Popen[bytes], tail: RecordTail, progress: RunProgress, case_timeout: float,
           on_poll: Callable[[RunProgress], None] | None) -> bool:
    """Wait for the child; kill it when its case in flight passes the deadline. True when it was killed."""
    deadline_s = case_timeout + grace_s(case_timeout)
    while proc.poll() is None:
        progress.take(tail.read(), time.monotonic())
        flight = progress.in_flight()
        if flight is not None and time.monotonic() - flight[1] > deadline_s:
            _kill_group(proc)
            proc.wait()
            return True
        if on_poll:
            on_poll(progress)
        time.sleep(POLL_S)
    _kill_group(proc)  # whatever the backend left behind in the child's session
    return False


def _stop(proc: subprocess.Popen[bytes], tail: RecordTail, progress: RunProgress, results: Path) -> None:
    """Interrupt the child (SIGINT, so it writes its end record), kill it if it does not stop, and record the
    case in flight ``interrupted``."""
    if proc.poll() is None:
        _kill_group(proc, signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
    _kill_group(proc)
    progress.take(tail.read(), time.monotonic())
    flight = progress.in_flight()
    if flight is not None:
        append_line(results, CaseRecord.ended(flight[0], Status.INTERRUPTED, "the run was interrupted during this case",
                                              None))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

