"""The work-depth view of reductions (SPEC WD-0..WD-3): W and D against n, and Brent's bound.

Points are what the harness recorded in WD cases' ``metrics`` (``n``, ``W``, ``D``, ``schedule``); lines are
the declared schedule rebuilt with ``implementations.schedule`` over a grid of n. Brent: a greedy
p-processor run of the schedule takes ``T_p ≤ W/p + D`` steps (``Schedule.greedy_time``). A declared
schedule that cannot be rebuilt (an unknown kind, ``blocked p=0``) is named in the section's problems.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from markupsafe import Markup

from conformance.fields import describe, is_finite
from implementations import schedule as schedules
from reports import charts
from reports.cases import Conformance
from reports.fmt import fmt_num
from reports.load import ResultSet

BRENT_P = (1, 4, 16, 64, 256, 1024)
#: largest n for which declared schedules are rebuilt and simulated (pure Python, O(n))
SIMULATE_MAX_N = 1 << 16
BUILDERS = {
    "sequential": schedules.sequential,
    "pairwise tree": schedules.pairwise_tree,
    "halving tree": schedules.halving_tree,
}
BLOCKED = re.compile(r"blocked p=(\d{1,9}) \+ (pairwise|halving) tree")


def rebuild_schedule(kind: str, n: int) -> schedules.Schedule:
    """The schedule a backend declares as ``kind``, rebuilt over ``n`` inputs; ValueError when ``kind`` is not
    one the schedule module builds (or its parameters are out of range)."""
    if kind in BUILDERS:
        return BUILDERS[kind](n)
    match = BLOCKED.fullmatch(kind)
    if match is None:
        raise ValueError(f"not one of {', '.join(BUILDERS)}, blocked p=P + pairwise/halving tree")
    return schedules.blocked(n, int(match[1]), match[2])


def n_grid(n_max: int) -> list[int]:
    """n = 2, 3, 4, 6, 8, 12, ... up to ``n_max``: powers of two and the non-powers between them."""
    grid, p = [], 2
    while p <= n_max:
        grid += [p] + ([p * 3 // 2] if p * 3 // 2 <= n_max else [])
        p *= 2
    return sorted(set(grid))


@dataclass
class Declared:
    """What one backend@device's WD cases recorded, and the schedule kind it declares."""

    #: (n, W, D) per case
    points: list[tuple[int, int, int]] = field(default_factory=list)
    kind: str = "undeclared"


def declared(conf: Conformance) -> dict[str, Declared]:
    """Per backend@device: the harness's (n, W, D) of its WD cases and its declared schedule kind; a backend
    with no WD case but a declared ``reduce_schedule`` appears under its name."""
    rows: dict[str, Declared] = defaultdict(Declared)
    for c in conf.cases:
        m = c.metrics
        if c.area == "WD" and all(is_finite(m.get(k)) for k in "nWD") and m["n"] >= 1 and min(m["W"], m["D"]) >= 0:
            rows[c.row].points.append((int(m["n"]), int(m["W"]), int(m["D"])))
            if isinstance(m.get("schedule"), str) and m["schedule"]:
                rows[c.row].kind = m["schedule"]
    for name, entry in conf.backends.items():
        if entry.reduce_schedule and not any(row.startswith(f"{name}@") for row in rows):
            rows[name].kind = entry.reduce_schedule
    return dict(sorted(rows.items()))


@dataclass(frozen=True)
class BrentStep:
    """Brent's bound at one p: greedy steps (None without a schedule) against ``W/p + D``."""

    greedy: int | None
    bound: str
    holds: bool | None


@dataclass(frozen=True)
class BrentRow:
    """One backend's schedule at the largest n: W, D and the bound at each p of ``BRENT_P``."""

    row: str
    kind: str
    n: int
    W: int
    D: int
    steps: list[BrentStep]


@dataclass(frozen=True)
class WorkDepthView:
    """One result set's W and D chart, Brent table and the schedules it could not rebuild."""

    set: ResultSet
    chart: Markup
    brent: list[BrentRow]
    p: tuple[int, ...]
    problems: list[str]


def brent_row(row: str, kind: str, n: int, work: int, depth: int, sched: schedules.Schedule | None) -> BrentRow:
    """Greedy steps of ``sched`` against Brent's bound ``W/p + D`` for each p."""
    steps = []
    for p in BRENT_P:
        bound = work / p + depth
        greedy = sched.greedy_time(p) if sched else None
        steps.append(BrentStep(greedy, fmt_num(bound, 5), None if greedy is None else greedy <= bound))
    return BrentRow(row, kind, n, work, depth, steps)


def rebuilt_lines(row: str, kind: str, n_max: int,
                  color: str | None) -> tuple[list[charts.Series], schedules.Schedule | None]:
    """The declared schedule's W and D over a grid of n (two series), and the schedule at ``n_max`` when it
    can be simulated; ValueError when the kind cannot be rebuilt."""
    built = [(n, rebuild_schedule(kind, n)) for n in n_grid(min(max(n_max, 64), SIMULATE_MAX_N))]
    ns = [n for n, _ in built]
    lines = [charts.Series(f"{row}: {kind}", ns, [s.work for _, s in built], color),
             charts.Series(f"{row}: {kind}", ns, [s.depth for _, s in built], color)]
    return lines, rebuild_schedule(kind, n_max) if n_max <= SIMULATE_MAX_N else None


def work_depth(rs: ResultSet, colors: dict[str, str]) -> WorkDepthView | None:
    """W and D against n for each reduction backend of ``rs``, with Brent's bound (None without any)."""
    rows = declared(rs.conformance) if rs.conformance else {}
    if not rows:
        return None
    w_series, d_series, brent, problems = [], [], [], []
    for row, found in rows.items():
        color, kind = colors.get(row.rsplit("@", 1)[0]), found.kind
        pts = sorted(set(found.points))
        if pts:
            ns = [p[0] for p in pts]
            w_series.append(charts.Series(f"{row} (harness)", ns, [p[1] for p in pts], color, "points"))
            d_series.append(charts.Series(f"{row} (harness)", ns, [p[2] for p in pts], color, "points"))
        n_max = max([p[0] for p in pts] or [1024])
        sched = None
        if kind != "undeclared":
            try:
                (w_line, d_line), sched = rebuilt_lines(row, kind, n_max, color)
            except ValueError as exc:
                problems.append(f"{row}: schedule {describe(kind, 160)} is not rebuilt ({exc}); "
                                "only the harness's points are drawn")
            else:
                w_series.append(w_line)
                d_series.append(d_line)
        if sched is not None:
            brent.append(brent_row(row, kind, n_max, sched.work, sched.depth, sched))
        elif pts:
            brent.append(brent_row(row, kind, n_max, pts[-1][1], pts[-1][2], None))
    chart = charts.line_chart([
        charts.Panel("work W (additions)", w_series, "n", "W", logx=True, logy=True),
        charts.Panel("depth D (longest chain)", d_series, "n", "D", logx=True, logy=True),
    ], width=4.2)
    return WorkDepthView(rs, chart, brent, BRENT_P, problems)
