"""Runs the conformance suite with each backend in a subprocess of its own.

A backend that segfaults, aborts or hangs takes down only its own process: the supervisor finds the case
that was in flight (a ``start`` record with no result), records it ``crashed`` (the plugin itself records
``timeout`` before it exits), and restarts the backend's run with ``--resume`` so the remaining cases still
run. Nothing already written is lost: every record is flushed as it is made.
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
from pathlib import Path
from typing import Any

from conformance.plugin import TIMEOUT_EXIT

CONFORMANCE_DIR = Path(__file__).resolve().parent
#: pytest's own exit codes that mean "the run finished" (ok, tests failed, interrupted, usage, none collected)
FINISHED = {0, 1, 2, 5}
MAX_RESTARTS = 20


@dataclass
class BackendRun:
    """What happened to one backend's subprocess runs."""

    backend: str
    run_id: str
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    crashed_ids: list[str] = field(default_factory=list)
    log: Path | None = None


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a results file (a line cut by a crash is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def in_flight(records: list[dict[str, Any]], run_id: str) -> dict[str, Any] | None:
    """The last ``start`` record of ``run_id`` that has no result: the case a dead process was running."""
    current = False
    started: dict[str, dict[str, Any]] = {}
    for rec in records:
        kind = rec.get("kind")
        if kind in ("run", "resume"):
            current = rec.get("run_id") == run_id
        elif current and kind == "start":
            started[rec["id"]] = rec
        elif current and kind == "case":
            started.pop(rec["id"], None)
    return list(started.values())[-1] if started else None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def run_backend(
    backend: str,
    results: Path,
    pytest_args: list[str],
    *,
    log_dir: Path,
    on_poll: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
) -> BackendRun:
    """Run the suite for one backend, restarting after crashes, until every case has a result."""
    run = BackendRun(backend, uuid.uuid4().hex[:12], log=log_dir / f"{_safe(backend)}.log")
    log_dir.mkdir(parents=True, exist_ok=True)
    while True:
        cmd = [sys.executable, "-m", "pytest", str(CONFORMANCE_DIR), "--backend", backend, "--results",
               str(results), "--run-id", run.run_id, "-p", "no:cacheprovider", "-q", "-rN", *pytest_args]
        if run.restarts:
            cmd.append("--resume")
        with open(run.log, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy())
            try:
                while proc.poll() is None:
                    if on_poll:
                        on_poll()
                    time.sleep(0.5)
            except KeyboardInterrupt:  # stop the child too; what it recorded stays in the results file
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        code = proc.returncode
        run.exit_codes.append(code)
        if code in FINISHED:
            return run
        flight = in_flight(read_records(results), run.run_id)
        if flight is not None and code != TIMEOUT_EXIT:
            record = {k: v for k, v in flight.items() if k != "kind"} | {
                "kind": "case", "status": "crashed", "reason": f"the backend's process {_describe_exit(code)}",
                "err": None, "ref_err": None, "ratio": None, "duration": None, "metrics": {}}
            with open(results, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            run.crashed_ids.append(flight["id"])
        elif flight is None and code != TIMEOUT_EXIT:
            return run  # died outside any case (collection, start-up): the log says why
        run.restarts += 1
        if run.restarts > MAX_RESTARTS:
            return run


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def counts(records: list[dict[str, Any]], backend: str | None = None) -> Counter[str]:
    """Status counts of case records (of one backend when given)."""
    return Counter(r["status"] for r in records
                   if r.get("kind") == "case" and (backend is None or r.get("backend") == backend))
