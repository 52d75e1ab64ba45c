"""A conformance JSON-lines file (docs/results-format.md) as the report reads it: its cases, backends and
provenance, decoded by ``conformance.codec``.

A run writes a ``run`` record (provenance, backend listing), a ``start`` before each case, the ``case``
result, and an ``end`` record; a pytest child per backend writes its own ``run`` record. Nothing in the file
makes the reader raise: a line that is not JSON, a case without an id, backend or known status, or a field
of the wrong type is a problem of the file, and everything readable is kept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from conformance.codec import read_lines
from conformance.fields import parse_time
from conformance.records import BackendListing, CaseRecord, CaseStart, EndRecord, Provenance, RunRecord
from conformance.results import Status

#: a start with no result: the supervisor records real crashes itself, so this one was stopped from outside
#: (a time limit, Ctrl-C) or died unsupervised
INTERRUPTED_REASON = "the run stopped during this case: its start record has no result"


@dataclass
class Conformance:
    """The cases of one conformance JSON-lines file (all runs in it; a later result for an id replaces one)."""

    path: Path
    #: the last run record's machine and software; its date is the earliest start of the file's runs
    provenance: Provenance = field(default_factory=Provenance)
    backends: dict[str, BackendListing] = field(default_factory=dict)
    cases: list[CaseRecord] = field(default_factory=list)
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


def _earliest(times: list[str]) -> str | None:
    """The earliest of ISO-8601 times (unparseable ones ignored)."""
    parsed = [(when, text) for text in times if (when := parse_time(text))]
    return min(parsed)[1] if parsed else None


def load_conformance(path: Path) -> Conformance:
    """Read a conformance JSON-lines file; a start without its case counts as that case interrupted."""
    result = Conformance(Path(path))
    try:
        records, result.problems = read_lines(result.path)
    except OSError as exc:
        result.problems.append(f"cannot be read: {exc.strerror or exc}")
        return result
    cases: dict[tuple[str, str], CaseRecord] = {}
    pending: dict[tuple[str, str], CaseStart] = {}
    starts: list[str] = []

    def close_run() -> None:
        for start in pending.values():
            cases[(start.id, start.backend)] = CaseRecord.ended(start, Status.INTERRUPTED, INTERRUPTED_REASON, None)
        pending.clear()

    for _, rec in records:
        if isinstance(rec, RunRecord):
            close_run()
            result.runs += 1
            result.finished = False
            result.provenance = rec.provenance
            starts += [t for t in (rec.provenance.timestamp, rec.started) if t]
            result.backends.update((b.name, b) for b in rec.backends)
        elif isinstance(rec, CaseStart):
            pending[(rec.id, rec.backend)] = rec
        elif isinstance(rec, CaseRecord):
            pending.pop((rec.id, rec.backend), None)
            cases.pop((rec.id, rec.backend), None)  # a re-run's result replaces the old one, at the end
            cases[(rec.id, rec.backend)] = rec
        elif isinstance(rec, EndRecord):
            result.finished = True
    close_run()
    result.cases = list(cases.values())
    result.provenance = replace(result.provenance, timestamp=_earliest(starts) or result.provenance.timestamp)
    if not records:
        result.problems.append("no records: the run wrote nothing")
    elif not result.finished:
        result.problems.append("the run did not finish (no end record): showing the cases it recorded")
    return result
