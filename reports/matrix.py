"""The conformance views: the backend × clause matrix, the drill-down page of one backend and clause, and
the results on a clause's page. Statuses, their severity order and which are bad come from
``conformance.results.Status``; this module only says how a cell words them."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from conformance.records import CaseRecord
from conformance.results import Status
from reports.fmt import fmt_num, fmt_value
from reports.load import ResultSet
from reports.spec import Spec, clause_key

#: what a matrix cell calls each status
WORDS: dict[Status, str] = {
    Status.CRASHED: "crash", Status.TIMEOUT: "timeout", Status.INTERRUPTED: "interrupted", Status.ERROR: "error",
    Status.FAILED: "fail", Status.XPASS: "xpass", Status.XFAIL: "xfail", Status.PASSED: "pass",
    Status.SKIPPED: "skip", Status.UNSUPPORTED: "unsup.", Status.NOT_IMPLEMENTED: "not impl.",
}
#: reasons a cell's hover text lists before pointing to the drill-down page
TITLE_REASONS = 6

#: backend@device -> clause -> the cases of one result set
Grouped = dict[str, dict[str, list[CaseRecord]]]


def page_name(text: str) -> str:
    """A file name for ``text``: itself if it is safe, else a slug with a hash (distinct texts, distinct names)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9@._-]{0,47}", text):
        return text
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:40] or "x"
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def clause_href(cid: str) -> str:
    """Path of a clause's page, from the output root."""
    return f"clauses/{page_name(cid)}.html"


def cases_href(rs: ResultSet, row: str, cid: str) -> str:
    """Path of the drill-down page of one backend@device and clause in a result set, from the output root."""
    return f"cases/{rs.slug}/{page_name(row)}/{page_name(cid)}.html"


def by_severity(counts: Counter[Status]) -> list[tuple[Status, int]]:
    """``(status, count)`` pairs, most severe status first."""
    return sorted(counts.items(), key=lambda kv: kv[0].severity)


def worst(statuses: Iterable[Status]) -> Status:
    """The status that colours a cell: the most severe one present."""
    return min(statuses, key=lambda s: s.severity)


def cases_by_row_and_clause(rs: ResultSet) -> Grouped:
    """``{backend@device: {clause: [case, ...]}}`` of a result set."""
    grouped: Grouped = defaultdict(lambda: defaultdict(list))
    for case in rs.conformance.cases if rs.conformance else []:
        grouped[case.row][case.clause].append(case)
    return grouped


@dataclass(frozen=True)
class Cell:
    """One matrix cell: its colour (the worst status), hover text, drill-down link and counts per status."""

    css: str
    title: str
    href: str
    #: (status, count, word), most severe first
    parts: list[tuple[Status, int, str]]


@dataclass(frozen=True)
class Row:
    """A backend@device row of one area's table; None where it has no cases of a clause."""

    label: str
    cells: list[Cell | None]


@dataclass(frozen=True)
class Group:
    """The rows of one result set in one area's table."""

    set: ResultSet
    rows: list[Row]


@dataclass(frozen=True)
class ClauseColumn:
    """A clause column: its id, the link to its page and its title."""

    id: str
    href: str
    title: str


@dataclass(frozen=True)
class AreaTable:
    """The matrix of one area (ATT, GRAD, SMX, KD, WD): a column per clause, a row group per result set."""

    area: str
    name: str
    clauses: list[ClauseColumn]
    groups: list[Group]


def cell_title(row: str, cid: str, cases: list[CaseRecord]) -> str:
    """The hover text of a matrix cell: counts, then the reasons of non-passing cases with their counts."""
    counts = Counter(c.status for c in cases)
    lines = [f"{row} · {cid}: " + ", ".join(f"{n} {s}" for s, n in by_severity(counts))]
    reasons = Counter(f"{c.status}: {c.reason}" for c in cases if c.status is not Status.PASSED and c.reason)
    for text, n in reasons.most_common(TITLE_REASONS):
        lines.append(f"{text} (×{n})" if n > 1 else text)
    if len(reasons) > TITLE_REASONS:
        lines.append(f"… {len(reasons) - TITLE_REASONS} more reasons on the drill-down page")
    return "\n".join(lines)


def cell(rs: ResultSet, row: str, cid: str, cases: list[CaseRecord]) -> Cell | None:
    """The cell of one backend@device and clause (None without cases)."""
    if not cases:
        return None
    counts = Counter(c.status for c in cases)
    return Cell(css=f"st-{worst(counts)}", title=cell_title(row, cid, cases), href=cases_href(rs, row, cid),
                parts=[(s, n, WORDS[s]) for s, n in by_severity(counts)])


def matrix(sets: list[ResultSet], grouped: dict[str, Grouped], spec: Spec) -> tuple[list[AreaTable], list[str]]:
    """The backend × clause matrix, one table per area, and every clause id seen or stated.

    ``grouped`` holds :func:`cases_by_row_and_clause` of each set, by slug.
    """
    seen = {cid for rows in grouped.values() for by_clause in rows.values() for cid in by_clause}
    clause_ids = sorted(seen | set(spec.clauses), key=clause_key)
    tables = []
    for area in sorted({clause_key(c)[:2] for c in clause_ids}):
        ids = [c for c in clause_ids if clause_key(c)[:2] == area]
        groups = [Group(rs, [Row(row, [cell(rs, row, cid, grouped[rs.slug][row].get(cid, [])) for cid in ids])
                             for row in sorted(grouped[rs.slug])])
                  for rs in sets]
        columns = [ClauseColumn(c, clause_href(c), spec.clauses[c].title if c in spec.clauses else "not in SPEC.md")
                   for c in ids]
        tables.append(AreaTable(area[1], spec.areas.get(area[1], ""), columns, groups))
    return tables, clause_ids


@dataclass(frozen=True)
class CaseRow:
    """A case as the drill-down table shows it."""

    id: str
    shape: str
    dtype: str
    seed: str
    err: str
    worst: str
    ref_err: str
    ratio: str
    mult: str
    status: Status
    message: str
    duration: str
    metrics: str
    #: the command that reruns the case, or None
    repro: str | None


def case_rows(cases: list[CaseRecord]) -> list[CaseRow]:
    """The drill-down table's rows, most severe first."""
    return [CaseRow(
        id=c.id, shape=c.shape or "—", dtype=c.dtype or "—", seed="—" if c.seed is None else str(c.seed),
        err=fmt_num(c.err), worst=c.worst or "", ref_err=fmt_num(c.ref_err), ratio=fmt_num(c.ratio),
        mult=fmt_num(c.mult), status=c.status, message=c.reason or "",
        duration=fmt_num(c.duration, 2), metrics=", ".join(f"{k}={fmt_value(v)}" for k, v in c.metrics.items()),
        repro=c.repro,
    ) for c in sorted(cases, key=lambda c: (c.status.severity, c.id))]


@dataclass(frozen=True)
class ClauseResult:
    """One backend@device's results on a clause page."""

    set: str
    row: str
    href: str
    counts: Counter[Status]


def clause_results(cid: str, sets: list[ResultSet], grouped: dict[str, Grouped]) -> list[ClauseResult]:
    """Every backend@device with cases of clause ``cid``, per set, with links to the drill-downs."""
    return [ClauseResult(rs.label, row, cases_href(rs, row, cid), Counter(c.status for c in by_clause[cid]))
            for rs in sets for row, by_clause in sorted(grouped[rs.slug].items()) if cid in by_clause]
