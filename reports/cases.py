"""Reading a conformance JSON-lines file (docs/results-format.md) into typed case records.

A run writes a ``run`` record (provenance, backend listing), a ``start`` before each case, the ``case``
result, and an ``end`` record; a pytest child per backend writes its own ``run`` record. Nothing in the file
makes the reader raise: a line that is not JSON, a case without an id, backend or known status, or a field
of the wrong type is a problem of the file, and everything readable is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from conformance.results import Status
from reports.fields import Fields, Record, describe, parse_time
from reports.provenance import Provenance

#: a start with no result: the supervisor records real crashes itself, so this one was stopped from outside
#: (a time limit, Ctrl-C) or died unsupervised
INTERRUPTED_REASON = "the run stopped during this case: its start record has no result"


@dataclass(frozen=True)
class Case:
    """One case result: a test of one clause on one backend and device, with its verdict and scores."""

    id: str
    clause: str
    backend: str
    device: str
    status: Status
    dtype: str | None = None
    shape: str | None = None
    seed: int | None = None
    err: float | None = None
    ref_err: float | None = None
    ratio: float | None = None
    mult: float | None = None
    #: the output whose error is ``err`` (out, lse, dq, ...)
    worst: str | None = None
    reason: str | None = None
    message: str | None = None
    duration: float | None = None
    metrics: Record = field(default_factory=dict)
    #: a one-line shell command that reruns this case (failing cases)
    repro: str | None = None

    @property
    def row(self) -> str:
        """The matrix row of the case: ``backend@device``."""
        return f"{self.backend}@{self.device}"

    @property
    def area(self) -> str:
        """The clause's area: ATT, GRAD, SMX, KD, WD."""
        return self.clause.split("-", 1)[0]


@dataclass(frozen=True)
class BackendEntry:
    """A backend as a run record lists it."""

    name: str
    available: bool | None
    reason: str | None
    #: the combine schedule its reduction declares (``capabilities.reduce_schedule``)
    reduce_schedule: str | None


@dataclass
class Conformance:
    """The cases of one conformance JSON-lines file (all runs in it; a later result for an id replaces one)."""

    path: Path
    #: the last run record's machine and software; its date is the earliest start of the file's runs
    provenance: Provenance = field(default_factory=Provenance)
    backends: dict[str, BackendEntry] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)
    runs: int = 0
    #: the last run in the file wrote its ``end`` record
    finished: bool = False
    problems: list[str] = field(default_factory=list)

    def counts(self) -> Counter[Status]:
        """Cases per status."""
        return Counter(c.status for c in self.cases)

    @property
    def date_note(self) -> str:
        """Says which start the date is when the file holds several runs."""
        return f"the earliest start of {self.runs} runs" if self.runs > 1 else ""


def read_json_lines(path: Path) -> tuple[list[tuple[int, Record]], list[str]]:
    """The JSON objects of a JSON-lines file with their line numbers, and a problem line for each line that
    is not one."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[tuple[int, Record]] = []
    problems: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            where = "the last line (truncated?)" if lineno == len(lines) else f"line {lineno}"
            problems.append(f"{where} is not valid JSON and was skipped")
            continue
        if isinstance(obj, dict):
            records.append((lineno, obj))
        else:
            problems.append(f"line {lineno} is not a JSON object and was skipped")
    return records, problems


def _device_from_id(case_id: str, backend: str) -> str | None:
    """The device named in a test id ``CLAUSE[backend-device-...]``."""
    inner = case_id.partition("[")[2]
    if inner.startswith(backend + "-"):
        return inner[len(backend) + 1:].split("-", 1)[0] or None
    return None


def parse_case(rec: Record, where: str, problems: list[str], status: Status | None = None) -> Case | None:
    """The case in ``rec``, or None (noted in ``problems``) when its id, backend or status is missing or wrong.
    Clause and device default to what the id names; ``status`` overrides the record's (a start record)."""
    f = Fields(rec, where)
    case_id, backend = f.text("id"), f.text("backend")
    status = status or Status.parse(rec.get("status"))
    if status is None:
        f.problems.append(f"{where}: status {describe(rec.get('status'))} is not a status of the format")
    clause = f.text("clause") or (case_id.split("[", 1)[0] if case_id else None)
    device = f.text("device") or (_device_from_id(case_id, backend) if case_id and backend else None)
    missing = [name for name, value in (("id", case_id), ("backend", backend), ("clause", clause),
                                        ("device", device)) if not value]
    if missing:
        f.problems.append(f"{where}: a case record without {', '.join(missing)}; left out")
    if missing or status is None:
        problems += f.problems
        return None
    found = Case(
        id=case_id, clause=clause, backend=backend, device=device, status=status, dtype=f.text("dtype"),
        shape=f.text("shape"), seed=f.integer("seed"), err=f.number("err"), ref_err=f.number("ref_err"),
        ratio=f.number("ratio"), mult=f.number("mult"), worst=f.text("worst"), reason=f.text("reason"),
        message=f.text("message"), duration=f.number("duration"), metrics=f.mapping("metrics"),
        repro=f.text("repro"),
    )
    problems += f.problems
    return found


def _interrupted(start: Record, where: str, problems: list[str]) -> Case | None:
    """The case record standing for a start record whose case never finished."""
    case = parse_case(start, where, problems, status=Status.INTERRUPTED)
    return replace(case, reason=INTERRUPTED_REASON) if case else None


def _backends(rec: Record, where: str, problems: list[str]) -> list[BackendEntry]:
    """The backend listing of a run record."""
    entries = []
    listing = Fields(rec, where)
    for entry in listing.records("backends"):
        f = Fields(entry, f"{where}: backend {describe(entry.get('name'))}")
        name = f.text("name")
        if name:
            entries.append(BackendEntry(name, f.flag("available"), f.text("reason"),
                                        Fields(f.mapping("capabilities"), f.where).text("reduce_schedule")))
        problems += f.problems
    problems += listing.problems
    return entries


def _earliest(times: list[str]) -> str | None:
    """The earliest of ISO-8601 times (unparseable ones ignored)."""
    parsed = [(when, text) for text in times if (when := parse_time(text))]
    return min(parsed)[1] if parsed else None


def load_conformance(path: Path) -> Conformance:
    """Read a conformance JSON-lines file; a start without its case counts as that case interrupted."""
    result = Conformance(Path(path))
    try:
        records, result.problems = read_json_lines(result.path)
    except OSError as exc:
        result.problems.append(f"cannot be read: {exc.strerror or exc}")
        return result
    cases: dict[tuple[str, str], Case] = {}
    pending: dict[tuple[str, str], tuple[str, Record]] = {}
    starts: list[str] = []

    def close_run() -> None:
        for where, start in pending.values():
            if case := _interrupted(start, where, result.problems):
                cases[(case.id, case.backend)] = case
        pending.clear()

    for lineno, rec in records:
        kind, where = rec.get("kind"), f"line {lineno}"
        key = (str(rec.get("id")), str(rec.get("backend")))
        if kind in ("run", "resume"):
            close_run()
            result.runs += 1
            result.finished = False
            result.provenance = Provenance.parse(rec.get("provenance"), where, result.problems)
            starts += [t for t in (result.provenance.timestamp, rec.get("started")) if isinstance(t, str)]
            result.backends.update((b.name, b) for b in _backends(rec, where, result.problems))
        elif kind == "start":
            pending[key] = (where, rec)
        elif kind == "case":
            pending.pop(key, None)
            if case := parse_case(rec, where, result.problems):
                cases.pop((case.id, case.backend), None)  # a re-run's result replaces the old one, at the end
                cases[(case.id, case.backend)] = case
        elif kind == "end":
            result.finished = True
    close_run()
    result.cases = list(cases.values())
    result.provenance = replace(result.provenance, timestamp=_earliest(starts) or result.provenance.timestamp)
    if not records:
        result.problems.append("no records: the run wrote nothing")
    elif not result.finished:
        result.problems.append("the run did not finish (no end record): showing the cases it recorded")
    return result
