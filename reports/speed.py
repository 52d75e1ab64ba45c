"""The speed view of one bench file: throughput charts against the workload size and every timing in a table.

Attention is drawn as TFLOP/s against S per op, device, dtype, D and causal; the other ops (KD loss, softmax
statistics, reduction) as GB/s against the size that varies. The measured ceiling is a dashed line. The y
axis is logarithmic when the rates span more than a decade (a CPU backend next to a GPU one).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup

from conformance.fields import Scalar, is_finite
from conformance.records import BenchRecord, Ceilings, TimedCall
from conformance.results import Status
from reports import charts
from reports.fmt import fmt_bytes, fmt_ms, fmt_num
from reports.load import ResultSet
from reports.timings import Bench

#: workload keys used as a chart's x axis, in order of preference (attention, KD loss, softmax statistics,
#: reduction)
X_KEYS = ("S", "Sk", "Sq", "V", "cols", "n")
#: workload figures derived from the sizes: not shown in the table, never an axis
DERIVED = frozenset({"flops", "min_bytes", "bytes"})
#: a record's timed call as the table says it
TIMED_CALLS = {TimedCall.PREPARED: "timed: its prepared call (no forward recomputed)",
               TimedCall.CONTRACT: "timed: the contract calls"}


@dataclass(frozen=True)
class Figure:
    """A titled chart."""

    title: str
    chart: Markup


@dataclass(frozen=True)
class TimingRow:
    """A timing as the speed table shows it."""

    op: str
    label: str
    workload: str
    dtype: str
    backend: str
    gate: str
    gate_css: str
    reason: str
    median: str
    iqr: str
    rate: str
    fraction: str
    memory: str
    baseline: str
    speedup: str
    #: the reference rows' medians over this one's, e.g. "flex 1.05×, torch-cudnn 0.91×"
    vs: str
    flag: str
    #: which call was timed, where the operation offers two (TIMED_CALLS); empty otherwise
    timed: str = ""


@dataclass(frozen=True)
class SpeedView:
    """The charts and table of one bench file of a result set."""

    set: ResultSet
    file: str
    figures: list[Figure]
    table: list[TimingRow]
    ceilings: str


def x_axis(workloads: list[dict[str, Scalar]]) -> tuple[str, list[float]] | None:
    """The x variable of a chart of these workloads: the first of ``X_KEYS`` they all have (S, Sk, ..., n),
    else the one numeric size that varies, else the product of those that vary (``N×V``); None if nothing fits.
    Derived figures (``flops``, ``min_bytes``) are never the x variable."""
    for key in X_KEYS:
        if all(is_finite(w.get(key)) for w in workloads):
            return key, [float(w[key]) for w in workloads]
    keys = sorted({k for w in workloads for k, v in w.items() if is_finite(v)} - DERIVED)
    numeric = [k for k in keys if all(is_finite(w.get(k)) for w in workloads)]
    varying = [k for k in numeric if len({w[k] for w in workloads}) > 1]
    if not varying:
        return None
    return "×".join(varying), [float(np.prod([float(w[k]) for k in varying])) for w in workloads]


def timing_order(t: BenchRecord) -> tuple[object, ...]:
    """Sort key of timings: op, device, dtype, workload (numbers by value), backend."""
    sizes = tuple((k, 0, float(v), "") if is_finite(v) else (k, 1, 0.0, str(v)) for k, v in sorted(t.workload.items()))
    return t.op, t.device, t.dtype, sizes, t.backend


def chart_key(t: BenchRecord) -> tuple[str, ...] | None:
    """Which chart a timing is drawn in: ("tflops", op, device, dtype, D, causal) or ("gbps", op, device,
    dtype); None without a finite rate."""
    if is_finite(t.tflops):
        causal = "causal" if t.workload.get("causal") is True else "non-causal"
        return "tflops", t.op, t.device, t.dtype, f"D={t.workload.get('D')}", causal
    if is_finite(t.gbps):
        return "gbps", t.op, t.device, t.dtype
    return None


def figure(key: tuple[str, ...], timings: list[BenchRecord], ceilings: Ceilings, devices: set[str],
           colors: dict[str, str]) -> Figure | None:
    """The chart of one group of timings: a line per backend against the x variable, the ceiling dashed."""
    axis = x_axis([t.workload for t in timings])
    if axis is None:
        return None
    metric, device = key[0], key[2]
    xname, xs = axis
    series = []
    for backend in sorted({t.backend for t in timings}):
        pts = sorted((x, float(getattr(t, metric))) for x, t in zip(xs, timings)
                     if t.backend == backend and is_finite(x) and x > 0)
        if pts:
            series.append(charts.Series(backend, [p[0] for p in pts], [p[1] for p in pts], colors.get(backend)))
    if not series:
        return None
    ceiling, unit = (ceilings.matmul_tflops, "TFLOP/s") if metric == "tflops" else (ceilings.copy_gbps, "GB/s")
    hlines = []
    if is_finite(ceiling) and ceilings.applies_to(device, devices):
        hlines.append((ceiling, f"measured ceiling {fmt_num(ceiling)} {unit}"))
    title = " · ".join(key[1:])
    logy = charts.spans_decades([y for s in series for y in s.y] + [y for y, _ in hlines])
    return Figure(title, charts.line_chart([charts.Panel(title, series, xname, unit, logx=True, logy=logy,
                                                         hlines=hlines)]))


def gate_css(gate: Status | None) -> str:
    """How the table marks a correctness gate: ``bad`` for a bad status (``Status.bad``), ``ok`` for passed."""
    if gate is None:
        return ""
    return "bad" if gate.bad else "ok" if gate is Status.PASSED else ""


def rate(t: BenchRecord) -> str:
    """A timing's throughput with its unit."""
    if is_finite(t.tflops):
        return f"{fmt_num(t.tflops)} TFLOP/s"
    return f"{fmt_num(t.gbps)} GB/s" if is_finite(t.gbps) else "—"


def timing_row(t: BenchRecord) -> TimingRow:
    """A timing as a row of the speed table."""
    return TimingRow(
        op=t.op, label=t.label or "", workload=" ".join(f"{k}={v}" for k, v in t.workload.items() if k not in DERIVED),
        dtype=t.dtype, backend=t.row, gate=t.gate.value if t.gate else "—", gate_css=gate_css(t.gate),
        reason=t.reason or "", median=fmt_ms(t.median_s), iqr=fmt_ms(t.iqr_s), rate=rate(t),
        fraction=f"{t.fraction_of_ceiling:.0%}" if is_finite(t.fraction_of_ceiling) else "—",
        memory=fmt_bytes(t.peak_extra_bytes), baseline=t.baseline or "—",
        speedup=f"{fmt_num(t.speedup)}×" if is_finite(t.speedup) else "—",
        vs=", ".join(f"{name} {fmt_num(ratio)}×" for name, ratio in t.vs.items()) or "—", flag=t.flag or "",
        timed=TIMED_CALLS[t.timed] if t.timed else "",
    )


def ceiling_text(ceilings: Ceilings) -> str:
    """The measured ceilings of a bench run in words."""
    parts = []
    if is_finite(ceilings.matmul_tflops):
        how = f" ({ceilings.matmul})" if ceilings.matmul else ""
        parts.append(f"matmul {fmt_num(ceilings.matmul_tflops)} TFLOP/s{how}")
    if is_finite(ceilings.copy_gbps):
        parts.append(f"copy {fmt_num(ceilings.copy_gbps)} GB/s")
    if not parts:
        return "no ceilings were measured"
    where = f" on {ceilings.device}" if ceilings.device else ""
    return f"measured ceilings{where}: " + ", ".join(parts)


def speed(rs: ResultSet, bench: Bench, colors: dict[str, str]) -> SpeedView:
    """Throughput charts of one bench file of ``rs`` and its timing table."""
    devices = {t.device for t in bench.records}
    groups: dict[tuple[str, ...], list[BenchRecord]] = defaultdict(list)
    for t in bench.records:
        if key := chart_key(t):
            groups[key].append(t)
    figures = [f for key, timings in sorted(groups.items(), key=lambda kv: (kv[0][0] != "tflops", kv[0]))
               if (f := figure(key, timings, bench.ceilings, devices, colors))]
    return SpeedView(rs, bench.path.name, figures, [timing_row(t) for t in sorted(bench.records, key=timing_order)],
                     ceiling_text(bench.ceilings))
