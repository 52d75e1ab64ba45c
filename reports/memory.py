"""The memory view of one bench file: peak extra memory against S on log-log axes, per op and device.

A backend's slope (``MemoryRecord.scaling``: the stored one, else a least-squares fit) says how its memory
grows: 1 is linear in S (ATT-10), 2 materialises the S×S scores. Guide lines of slope 1 and 2 are drawn.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from conformance.records import MemoryRecord
from reports import charts
from reports.fmt import fmt_bytes, fmt_num
from reports.load import ResultSet
from reports.speed import Figure
from reports.timings import Bench


@dataclass(frozen=True)
class MemoryRow:
    """One backend's series as the memory table shows it."""

    backend: str
    op: str
    device: str
    slope: str
    points: int
    largest: str
    reason: str


@dataclass(frozen=True)
class MemoryView:
    """The charts and table of one bench file's memory scaling."""

    set: ResultSet
    file: str
    figures: list[Figure]
    table: list[MemoryRow]


def memory_row(m: MemoryRecord) -> MemoryRow:
    """A memory series as a table row: its slope and its largest S."""
    largest = f"S={m.points[-1][0]:g}: {fmt_bytes(m.points[-1][1])}" if m.points else "—"
    return MemoryRow(m.backend, m.op, m.device, fmt_num(m.scaling, 3), len(m.points), largest, m.reason or "")


def memory(rs: ResultSet, bench: Bench, colors: dict[str, str]) -> MemoryView | None:
    """Peak extra memory vs S per op and device of one bench file of ``rs`` (None without memory series)."""
    by_op: dict[tuple[str, str], list[MemoryRecord]] = defaultdict(list)
    for m in bench.memory_scaling:
        by_op[(m.op, m.device)].append(m)
    if not by_op:
        return None
    figures, table = [], []
    for (op, device), entries in sorted(by_op.items()):
        entries = sorted(entries, key=lambda m: m.backend)
        table += [memory_row(m) for m in entries]
        series = [charts.Series(f"{m.backend} (slope {fmt_num(m.scaling, 3)})", [x for x, _ in m.points],
                                [y for _, y in m.points], colors.get(m.backend)) for m in entries if m.points]
        if series:
            title = f"{op} · {device}"
            figures.append(Figure(title, charts.line_chart([charts.Panel(
                title, series, "S", "peak extra memory (bytes)", logx=True, logy=True, slopes=(1.0, 2.0))])))
    return MemoryView(rs, bench.path.name, figures, table)
