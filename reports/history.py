"""The history view (asv): headline benchmarks over commits per machine, relative to the first commit.

Headline benchmarks are the throughput ones (``track_*`` with ``tflops`` or ``gbps`` in the name) and the
ratios to the kernels people use (``track_vs_*``: the reference's time over the backend's) if any, else all;
at most ``HEADLINES`` per machine, those with the most commits first. A parametrised benchmark is
one series per value of its first parameter (usually the backend), the geometric mean over the others.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from markupsafe import Markup

from reports import charts
from reports.asv import AsvHistory, AsvRun
from reports.fmt import fmt_num

HEADLINES = 12


@dataclass(frozen=True)
class BenchmarkRow:
    """One headline benchmark of a machine: first and latest value and the change between them."""

    name: str
    unit: str
    first: str
    last: str
    commit: str
    change: str
    points: int


@dataclass(frozen=True)
class MachineHistory:
    """One machine's chart and table."""

    machine: str
    chart: Markup | None
    table: list[BenchmarkRow]
    commits: int


@dataclass(frozen=True)
class HistoryView:
    """The history section: a link to the copy of asv's pages, and each machine's history."""

    link: str | None
    machines: list[MachineHistory]
    problems: list[str]
    path: str


def _headline(method: str) -> bool:
    return method.startswith("track_vs_") or (method.startswith("track_")
                                              and any(u in method.lower() for u in ("tflops", "gbps")))


def headlines(runs: list[AsvRun]) -> list[str]:
    """The benchmarks a machine's chart shows, by name."""
    names = sorted({k for r in runs for k in r.values})
    chosen = [n for n in names if _headline(n.split(" [")[0].rsplit(".", 1)[-1])] or names
    return sorted(sorted(chosen, key=lambda n: -sum(r.values.get(n) is not None for r in runs))[:HEADLINES])


def machine_history(machine: str, runs: list[AsvRun], units: dict[str, str]) -> MachineHistory:
    """The chart and table of one machine's runs (in date order)."""
    commits = list(dict.fromkeys(r.commit for r in runs))
    series, table = [], []
    for name in headlines(runs):
        pts = [(r, v) for r in runs if (v := r.values.get(name)) is not None]
        if not pts:
            continue
        first, (last_run, last) = pts[0][1], pts[-1]
        series.append(charts.Series(name, [commits.index(r.commit) for r, _ in pts],
                                    [v / first if first else math.nan for _, v in pts]))
        table.append(BenchmarkRow(name, units.get(name.split(" [")[0], ""), fmt_num(first), fmt_num(last),
                                  last_run.commit[:12], f"{last / first - 1:+.1%}" if first else "—", len(pts)))
    dates = {r.commit: dt.datetime.fromtimestamp(r.date_ms / 1e3, dt.timezone.utc) for r in runs}
    chart = charts.line_chart([charts.Panel(
        f"{machine}: headline benchmarks", series, "commit", "relative to the first commit",
        hlines=[(1.0, "first commit")],
        xticklabels=[f"{c[:8]} {dates[c]:%m-%d}" for c in commits])], width=6.0) if series else None
    return MachineHistory(machine, chart, table, len(commits))


def history(hist: AsvHistory, output: Path) -> HistoryView:
    """Copy asv's published pages into the site and chart headline benchmarks over commits per machine."""
    link = None
    if hist.html_dir is not None:
        shutil.copytree(hist.html_dir, output / "asv")
        link = "asv/index.html"
    machines = [machine_history(m, [r for r in hist.runs if r.machine == m], hist.units)
                for m in sorted({r.machine for r in hist.runs})]
    return HistoryView(link, machines, hist.problems, str(hist.path))
