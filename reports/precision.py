"""The precision view: err / ref_err of each case against its tolerance multiplier.

A case passes when ``err ≤ mult · ref_err + atol_floor``; the ratio ``err / ref_err`` is its precision score.
Cases are counted by the statuses of the matrix (``conformance.results.Status``): an xfail is an expected
failure, not a failure, and only bad statuses are drawn as failures.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

from markupsafe import Markup

from conformance.records import CaseRecord
from conformance.results import Status
from reports import charts
from reports.fmt import fmt_num
from reports.load import ResultSet


@dataclass(frozen=True)
class Summary:
    """The scores of one backend@device, dtype and multiplier."""

    row: str
    dtype: str
    mult: str
    n: int
    median: str
    max: str
    #: cases whose ratio is above the multiplier (they passed, if at all, through the absolute floor)
    above: int
    counts: Counter[Status]


@dataclass(frozen=True)
class PrecisionView:
    """One result set's precision chart and summary table."""

    set: ResultSet
    chart: Markup
    summary: list[Summary]


def scored(cases: list[CaseRecord]) -> dict[tuple[float, str, str], list[CaseRecord]]:
    """Cases with a finite, non-negative ratio and a finite multiplier, by (multiplier, backend@device, dtype)."""
    strips: dict[tuple[float, str, str], list[CaseRecord]] = defaultdict(list)
    for c in cases:
        if c.ratio is not None and c.mult is not None and math.isfinite(c.ratio) and c.ratio >= 0 \
                and math.isfinite(c.mult) and c.mult > 0:
            strips[(c.mult, c.row, c.dtype or "?")].append(c)
    return strips


def precision_view(rs: ResultSet, colors: dict[str, str]) -> PrecisionView | None:
    """A strip/box chart of err/ref_err per backend and dtype per multiplier, and a summary (None without
    scores)."""
    strips = scored(rs.conformance.cases if rs.conformance else [])
    if not strips:
        return None
    facets: dict[float, list[charts.Strip]] = defaultdict(list)
    summary = []
    for (mult, row, dtype), cases in sorted(strips.items()):
        ratios = [c.ratio for c in cases]
        facets[mult].append(charts.Strip(f"{row} {dtype}", ratios, [c.status.bad for c in cases],
                                         colors.get(cases[0].backend)))
        summary.append(Summary(row, dtype, fmt_num(mult), len(cases), fmt_num(statistics.median(ratios)),
                               fmt_num(max(ratios)), sum(r > mult for r in ratios), Counter(c.status for c in cases)))
    return PrecisionView(rs, charts.precision_chart(sorted(facets.items())), summary)


def precision(sets: list[ResultSet], colors: dict[str, str]) -> list[PrecisionView]:
    """The precision view of every set that has scores."""
    return [view for rs in sets if (view := precision_view(rs, colors))]
