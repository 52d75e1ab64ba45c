"""The verdict tables of a conformance run, clause x backend: plain text for pytest's summary, rich for the CLI."""

from __future__ import annotations

from collections import Counter, defaultdict

from rich.console import Console
from rich.table import Table
from rich.text import Text

from conformance.records import CaseRecord, ConformanceRecord
from conformance.results import ORDER, Status
from conformance.spec import CLAUSES


def verdict_table(records: list[CaseRecord]) -> list[str]:
    """A plain-text clause x backend table: ``pass/total`` and the other statuses in short."""
    backends = sorted({r.row for r in records})
    per: dict[tuple[str, str], Counter[Status]] = defaultdict(Counter)
    for r in records:
        per[(r.clause, r.row)][r.status] += 1
    clauses = [c for c in CLAUSES if any((c, b) in per for b in backends)]
    width = max(14, *(len(b) for b in backends))
    lines = ["clause    " + "".join(b.ljust(width + 2) for b in backends)]
    for c in clauses:
        cells = []
        for b in backends:
            n = per.get((c, b))
            cells.append((_cell(n) if n else "-").ljust(width + 2))
        lines.append(c.ljust(10) + "".join(cells))
    return lines


#: the short names of the statuses a plain cell counts after its head
SHORT = ((Status.UNSUPPORTED, "uns"), (Status.NOT_IMPLEMENTED, "n/i"), (Status.XFAIL, "xf"), (Status.XPASS, "xp"))


def _cell(counts: Counter[Status]) -> str:
    """``FAIL 3/40`` when a case is bad, ``ok 37/40`` when some passed and none is bad, ``none 0/36`` when
    nothing passed; then the unsupported/xfail counts."""
    total = sum(counts.values())
    bad = sum(n for s, n in counts.items() if s.bad)
    passed = counts[Status.PASSED]
    head = f"FAIL {bad}/{total}" if bad else f"{'ok' if passed else 'none'} {passed}/{total}"
    extra = [f"{counts[k]} {short}" for k, short in SHORT if counts[k]]
    return head + (" (" + ", ".join(extra) + ")" if extra else "")


def _style(status: Status) -> str:
    if status.bad:
        return "bold magenta" if status.stopped else "bold red"
    return {Status.PASSED: "green", Status.XFAIL: "yellow", Status.XPASS: "yellow"}.get(status, "dim")


def print_verdicts(console: Console, records: list[ConformanceRecord]) -> None:
    """The clause x backend verdict table: the worst status of each cell, with counts."""
    cases = [r for r in records if isinstance(r, CaseRecord)]
    columns = sorted({r.row for r in cases})
    cells: dict[tuple[str, str], Counter[Status]] = defaultdict(Counter)
    for r in cases:
        cells[(r.clause, r.row)][r.status] += 1
    table = Table(title="verdicts (clause x backend)")
    table.add_column("clause")
    for c in columns:
        table.add_column(Text(c), overflow="fold")
    for cid, clause in CLAUSES.items():
        row: list[Text] = []
        for col in columns:
            n = cells.get((cid, col))
            if not n:
                row.append(Text("-"))
                continue
            worst = next(s for s in ORDER if n[s])
            row.append(Text(" ".join(f"{n[s]} {s}" for s in ORDER if n[s]), _style(worst)))
        if any(cell.plain != "-" for cell in row):
            table.add_row(Text(f"{cid} {clause.title}"), *row)
    console.print(table)
