"""``attnspec report``: build the static HTML report from conformance, benchmark and asv results.

    attnspec report [--conformance PATH ...] [--bench PATH ...] [--label NAME ...] [--asv DIR] [--output DIR]
    python -m reports.build ...

Each conformance file is a result set; a bench file joins the set measured on the same machine (host and GPU
in its provenance), else it is a set of its own. Sets are shown side by side, labelled in order by
``--label`` (else by their provenance). The site (``index.html``, a page per clause, a drill-down
page per backend and clause, ``static/report.css``, a copy of asv's pages) needs no network: charts are
inline SVG drawn with matplotlib, there is no JavaScript. Every string from a result file is escaped
(Jinja2 autoescape). See docs/report.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import re
import shutil
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from implementations import schedule as schedules
from reports import charts
from reports.load import STATUSES, AsvHistory, Bench, Record, ResultSet, load_asv, result_sets

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = Path("reports/out")
AREA_ORDER = ("ATT", "GRAD", "SMX", "KD", "WD")
#: what a matrix cell calls each status
STATUS_WORDS = {
    "passed": "pass", "failed": "fail", "crashed": "crash", "timeout": "timeout", "interrupted": "interrupted",
    "error": "error",
    "xfail": "xfail", "xpass": "xpass", "unsupported": "unsup.", "not_implemented": "not impl.", "skipped": "skip",
}
#: the files and folders a build writes into the output directory (and removes first)
GENERATED = ("index.html", "clauses", "cases", "static", "asv")
PROVENANCE_FIELDS = (
    ("machine", "hostname"), ("platform", "platform"), ("CPU", "cpu"), ("GPU", "gpu"), ("driver", "driver"),
    ("CUDA", "cuda"), ("Python", "python"), ("torch", "torch"), ("Triton", "triton"), ("CuPy", "cupy"),
    ("NumPy", "numpy"), ("commit", "commit"), ("date", "timestamp"),
)
#: workload keys used as a speed chart's x axis, in order of preference (attention, KD loss, softmax
#: statistics, reduction)
X_KEYS = ("S", "Sk", "Sq", "V", "cols", "n")
#: workload figures derived from the sizes: not shown in the table, never an axis
DERIVED = frozenset({"flops", "min_bytes", "bytes"})
#: how the speed table shows a record's correctness gate
GATE_CSS = {"passed": "ok", "failed": "bad", "error": "bad", "crashed": "bad", "timeout": "bad"}
BRENT_P = (1, 4, 16, 64, 256, 1024)
#: largest n for which declared schedules are rebuilt and simulated (pure Python, O(n))
SIMULATE_MAX_N = 1 << 16
SCHEDULE_BUILDERS = {
    "sequential": schedules.sequential,
    "pairwise tree": schedules.pairwise_tree,
    "halving tree": schedules.halving_tree,
}


# -- the clauses -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClauseText:
    """A clause as the report states it."""

    id: str
    area: str
    title: str
    text: str


@dataclass
class Spec:
    """The clauses, the tests that check each (name, docstring) and the areas' names."""

    clauses: dict[str, ClauseText] = field(default_factory=dict)
    tests: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    areas: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def load_spec() -> Spec:
    """Clauses from ``conformance.spec.CLAUSES``, tests from ``conformance.spec.tests_by_clause()``."""
    try:
        from conformance import spec as conformance_spec
    except ImportError as exc:
        return Spec(problems=[f"clause statements unavailable (conformance.spec: {exc})"])
    found = Spec(
        clauses={cid: ClauseText(c.id, c.area, c.title, c.text) for cid, c in conformance_spec.CLAUSES.items()},
        areas=dict(getattr(conformance_spec, "AREAS", {})),
    )
    try:
        found.tests = conformance_spec.tests_by_clause()
    except ImportError as exc:
        found.problems.append(f"test docstrings unavailable ({exc})")
    return found


def clause_key(cid: str) -> tuple[int, str, int, str]:
    """Sort clauses by area (ATT, GRAD, SMX, KD, WD, others) then number."""
    area, _, num = cid.partition("-")
    rank = AREA_ORDER.index(area) if area in AREA_ORDER else len(AREA_ORDER)
    return rank, area, int(num) if num.isdigit() else -1, cid


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


# -- formatting ------------------------------------------------------------------------------------------


def fmt_num(value: object, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; ``—`` for missing values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def fmt_ms(seconds: object) -> str:
    """Seconds shown as milliseconds."""
    return fmt_num(seconds * 1e3) if is_number(seconds) else "—"


def fmt_bytes(n: object) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "—"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:g} B"


def fmt_commit(prov: dict[str, Any]) -> str:
    """A commit hash shortened to 12 characters, marked when the tree was dirty."""
    commit = prov.get("commit")
    if not commit:
        return "—"
    return f"{str(commit)[:12]}{' (dirty)' if prov.get('dirty') else ''}"


def row_label(rec: Record) -> str:
    """The matrix row of a record: ``backend@device``."""
    return f"{rec.get('backend', '?')}@{rec.get('device', '?')}"


def is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def worst(statuses: Iterable[str]) -> str:
    """The status that colours a cell: the first of STATUSES present (failures before passes)."""
    present = set(statuses)
    return next((s for s in STATUSES if s in present), next(iter(sorted(present)), "none"))


# -- provenance ------------------------------------------------------------------------------------------


def provenance_columns(sets: Iterable[ResultSet]) -> list[dict[str, Any]]:
    """One column per result file: its set's label, kind, file name and provenance fields."""
    columns = []
    for rs in sets:
        for src in rs.sources:
            kind = "conformance" if src is rs.conformance else "bench"
            prov = src.provenance
            values = {label: fmt_commit(prov) if key == "commit" else (prov.get(key) or "—")
                      for label, key in PROVENANCE_FIELDS}
            columns.append({"set": rs.label, "kind": kind, "file": src.path.name, "values": values})
    return columns


# -- matrix and drill-down -------------------------------------------------------------------------------


def cases_by_row_and_clause(rs: ResultSet) -> dict[str, dict[str, list[Record]]]:
    """``{backend@device: {clause: [case, ...]}}`` of a result set."""
    grouped: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for case in rs.conformance.cases if rs.conformance else []:
        grouped[row_label(case)][str(case.get("clause", "?"))].append(case)
    return grouped


def cell_title(row: str, cid: str, cases: list[Record]) -> str:
    """The hover text of a matrix cell: counts, then the reasons of non-passing cases with their counts."""
    counts = Counter(str(c.get("status")) for c in cases)
    lines = [f"{row} · {cid}: " + ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=status_rank))]
    reasons = Counter(
        f"{c.get('status')}: {c.get('reason') or c.get('message')}"
        for c in cases if c.get("status") != "passed" and (c.get("reason") or c.get("message"))
    )
    for text, n in reasons.most_common(6):
        lines.append(f"{text} (×{n})" if n > 1 else text)
    if len(reasons) > 6:
        lines.append(f"… {len(reasons) - 6} more reasons on the drill-down page")
    return "\n".join(lines)


def status_rank(status: str) -> int:
    """Position of a status in STATUSES (unknown statuses last)."""
    return STATUSES.index(status) if status in STATUSES else len(STATUSES)


def matrix(sets: list[ResultSet], grouped: dict[str, dict[str, dict[str, list[Record]]]],
           spec: Spec) -> tuple[list[dict[str, Any]], list[str]]:
    """The backend × clause matrix, one table per area, and every clause id seen or stated.

    ``grouped`` holds :func:`cases_by_row_and_clause` of each set, by slug.
    """
    seen = {cid for rows in grouped.values() for by_clause in rows.values() for cid in by_clause}
    clause_ids = sorted(seen | set(spec.clauses), key=clause_key)
    tables = []
    for area in sorted({clause_key(c)[:2] for c in clause_ids}):
        ids = [c for c in clause_ids if clause_key(c)[:2] == area]
        groups = []
        for rs in sets:
            rows = grouped[rs.slug]
            body = []
            for row in sorted(rows):
                cells = []
                for cid in ids:
                    cases = rows[row].get(cid, [])
                    counts = Counter(str(c.get("status")) for c in cases)
                    cells.append(None if not cases else {
                        "css": f"st-{worst(counts)}",
                        "title": cell_title(row, cid, cases),
                        "href": cases_href(rs, row, cid),
                        "parts": [(s, counts[s], STATUS_WORDS.get(s, s)) for s in sorted(counts, key=status_rank)],
                    })
                body.append({"label": row, "cells": cells})
            groups.append({"set": rs, "rows": body})
        tables.append({
            "area": area[1], "name": spec.areas.get(area[1], ""), "groups": groups,
            "clauses": [{"id": c, "href": clause_href(c),
                         "title": spec.clauses[c].title if c in spec.clauses else "not in SPEC.md"} for c in ids],
        })
    return tables, clause_ids


def case_rows(cases: list[Record]) -> list[dict[str, Any]]:
    """The drill-down table's rows, failures first."""
    rows = []
    for c in sorted(cases, key=lambda c: (status_rank(str(c.get("status"))), str(c.get("id")))):
        message = [str(c[k]) for k in ("reason", "message") if c.get(k)]
        metrics = c.get("metrics") if isinstance(c.get("metrics"), dict) else {}
        rows.append({
            "id": c.get("id", "?"), "shape": c.get("shape") or "—", "dtype": c.get("dtype") or "—",
            "seed": c.get("seed", "—"), "err": fmt_num(c.get("err")), "ref_err": fmt_num(c.get("ref_err")),
            "ratio": fmt_num(c.get("ratio")), "mult": fmt_num(c.get("mult")), "status": str(c.get("status")),
            "worst": c.get("worst") or "",
            "message": " — ".join(message), "duration": fmt_num(c.get("duration"), 2),
            "metrics": ", ".join(f"{k}={fmt_num(v) if is_number(v) else v}" for k, v in metrics.items()),
        })
    return rows


# -- precision -------------------------------------------------------------------------------------------


def precision(sets: list[ResultSet], colors: dict[str, str]) -> list[dict[str, Any]]:
    """Per result set: a strip/box chart of err/ref_err per backend and dtype per multiplier, and a summary."""
    out = []
    for rs in sets:
        strips: dict[tuple[float, str, str], list[Record]] = defaultdict(list)
        for c in rs.conformance.cases if rs.conformance else []:
            if is_number(c.get("ratio")) and is_number(c.get("mult")):
                strips[(float(c["mult"]), row_label(c), str(c.get("dtype")))].append(c)
        if not strips:
            continue
        facets: dict[float, list[charts.Strip]] = defaultdict(list)
        summary = []
        for (mult, row, dtype), cases in sorted(strips.items()):
            ratios = [float(c["ratio"]) for c in cases]
            passed = [c.get("status") in ("passed", "xpass") for c in cases]
            color = colors.get(str(cases[0].get("backend")))
            facets[mult].append(charts.Strip(f"{row} {dtype}", ratios, passed, color))
            summary.append({
                "row": row, "dtype": dtype, "mult": fmt_num(mult), "n": len(cases),
                "median": fmt_num(statistics.median(ratios)), "max": fmt_num(max(ratios)),
                "above": sum(r > mult for r in ratios), "failed": passed.count(False),
            })
        out.append({"set": rs, "chart": charts.precision_chart(sorted(facets.items())), "summary": summary})
    return out


# -- speed and memory ------------------------------------------------------------------------------------


def x_axis(workloads: list[dict[str, Any]]) -> tuple[str, list[float]] | None:
    """The x variable of a chart of these workloads: the first of ``X_KEYS`` they all have (S, Sk, ..., n),
    else the one numeric size that varies, else the product of those that vary (``N×V``); None if nothing fits.
    Derived figures (``flops``, ``min_bytes``) are never the x variable."""
    for key in X_KEYS:
        if all(is_number(w.get(key)) for w in workloads):
            return key, [float(w[key]) for w in workloads]
    keys = sorted({k for w in workloads for k, v in w.items() if is_number(v)} - DERIVED)
    numeric = [k for k in keys if all(is_number(w.get(k)) for w in workloads)]
    varying = [k for k in numeric if len({w[k] for w in workloads}) > 1]
    if not varying:
        return None
    return "×".join(varying), [float(np.prod([w[k] for k in varying])) for w in workloads]


def timing_order(rec: Record) -> tuple[object, ...]:
    """Sort key of bench records: op, device, dtype, workload (numbers by value), backend."""
    w = rec.get("workload") if isinstance(rec.get("workload"), dict) else {}
    sizes = tuple((k, 0, float(v), "") if is_number(v) else (k, 1, 0.0, str(v)) for k, v in sorted(w.items()))
    return str(rec.get("op")), str(rec.get("device")), str(rec.get("dtype")), sizes, str(rec.get("backend"))


def ceiling_applies(ceilings: dict[str, Any], device: str, devices: set[str]) -> bool:
    """Whether the bench file's measured ceilings are those of ``device``."""
    named = ceilings.get("device")
    return not named or named == device or len(devices) == 1


def speed(rs: ResultSet, bench: Bench, colors: dict[str, str]) -> dict[str, Any]:
    """Throughput charts of one bench file of ``rs`` (TFLOP/s vs S per op, D, causal; GB/s for the others)
    and its speed-up table."""
    devices = {str(r.get("device")) for r in bench.records}
    groups: dict[tuple[str, ...], list[Record]] = defaultdict(list)
    for r in bench.records:
        w = r.get("workload") if isinstance(r.get("workload"), dict) else {}
        if is_number(r.get("tflops")):
            causal = "causal" if w.get("causal") else "non-causal"
            key = ("tflops", str(r.get("op")), str(r.get("device")), str(r.get("dtype")), f"D={w.get('D')}", causal)
        elif is_number(r.get("gbps")):
            key = ("gbps", str(r.get("op")), str(r.get("device")), str(r.get("dtype")))
        else:
            continue
        groups[key].append(r)
    figures = []
    for key, recs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "tflops", kv[0])):
        metric, device = key[0], key[2]
        workloads = [r["workload"] if isinstance(r.get("workload"), dict) else {} for r in recs]
        axis = x_axis(workloads)
        if axis is None:
            continue
        xname, xs = axis
        series = []
        for backend in sorted({str(r.get("backend")) for r in recs}):
            pts = sorted((x, float(r[metric])) for x, r in zip(xs, recs) if str(r.get("backend")) == backend and x > 0)
            if pts:
                series.append(charts.Series(backend, [p[0] for p in pts], [p[1] for p in pts], colors.get(backend)))
        if not series:
            continue
        hlines = []
        ceiling_key, unit = ("matmul_tflops", "TFLOP/s") if metric == "tflops" else ("copy_GBps", "GB/s")
        ceiling = bench.ceilings.get(ceiling_key)
        if is_number(ceiling) and ceiling_applies(bench.ceilings, device, devices):
            hlines.append((float(ceiling), f"measured ceiling {fmt_num(ceiling)} {unit}"))
        title = " · ".join(key[1:])
        figures.append({"title": title, "chart": charts.line_chart([charts.Panel(
            title, series, xname, unit, logx=True, hlines=hlines)])})
    table = []
    for r in sorted(bench.records, key=timing_order):
        w = r.get("workload") if isinstance(r.get("workload"), dict) else {}
        gate = r.get("gate")
        table.append({
            "op": r.get("op", "?"), "label": r.get("label") or "", "backend": row_label(r),
            "dtype": r.get("dtype", "?"),
            "workload": " ".join(f"{k}={v}" for k, v in w.items() if k not in DERIVED),
            "gate": gate or "—", "gate_css": GATE_CSS.get(str(gate), ""), "reason": r.get("reason") or "",
            "median": fmt_ms(r.get("median_s")), "iqr": fmt_ms(r.get("iqr_s")),
            "rate": f"{fmt_num(r['tflops'])} TFLOP/s" if is_number(r.get("tflops"))
            else f"{fmt_num(r['gbps'])} GB/s" if is_number(r.get("gbps")) else "—",
            "fraction": f"{r['fraction_of_ceiling']:.0%}" if is_number(r.get("fraction_of_ceiling")) else "—",
            "memory": fmt_bytes(r.get("peak_extra_bytes")), "baseline": r.get("baseline") or "—",
            "speedup": f"{fmt_num(r['speedup'])}×" if is_number(r.get("speedup")) else "—", "flag": r.get("flag") or "",
        })
    return {"set": rs, "file": bench.path.name, "figures": figures, "table": table,
            "ceilings": ceiling_text(bench.ceilings)}


def ceiling_text(ceilings: dict[str, Any]) -> str:
    """The measured ceilings of a bench run in words."""
    parts = []
    if is_number(ceilings.get("matmul_tflops")):
        how = f" ({ceilings['matmul']})" if ceilings.get("matmul") else ""
        parts.append(f"matmul {fmt_num(ceilings['matmul_tflops'])} TFLOP/s{how}")
    if is_number(ceilings.get("copy_GBps")):
        parts.append(f"copy {fmt_num(ceilings['copy_GBps'])} GB/s")
    if not parts:
        return "no ceilings were measured"
    where = f" on {ceilings['device']}" if ceilings.get("device") else ""
    return f"measured ceilings{where}: " + ", ".join(parts)


def fitted_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than 2 positive points)."""
    pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])


def memory(rs: ResultSet, bench: Bench, colors: dict[str, str]) -> dict[str, Any] | None:
    """Peak extra memory vs S on log-log axes per op of one bench file of ``rs``, with each backend's slope
    (1: linear, 2: quadratic)."""
    by_op: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for m in bench.memory_scaling:
        if isinstance(m.get("S"), list) and isinstance(m.get("peak_extra_bytes"), list):
            by_op[(str(m.get("op")), str(m.get("device")))].append(m)
    if not by_op:
        return None
    figures, table = [], []
    for (op, device), entries in sorted(by_op.items()):
        series = []
        for m in sorted(entries, key=lambda m: str(m.get("backend"))):
            pts = sorted((float(s), float(b)) for s, b in zip(m["S"], m["peak_extra_bytes"])
                         if is_number(s) and is_number(b) and s > 0 and b > 0)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            slope = m.get("slope") if is_number(m.get("slope")) else fitted_slope(xs, ys)
            backend = str(m.get("backend"))
            table.append({"backend": backend, "op": op, "device": device, "slope": fmt_num(slope, 3),
                          "points": len(pts), "largest": f"S={xs[-1]:g}: {fmt_bytes(ys[-1])}" if pts else "—",
                          "reason": m.get("reason") or ""})
            if pts:
                series.append(charts.Series(f"{backend} (slope {fmt_num(slope, 3)})", xs, ys, colors.get(backend)))
        if series:
            title = f"{op} · {device}"
            figures.append({"title": title, "chart": charts.line_chart([charts.Panel(
                title, series, "S", "peak extra memory (bytes)", logx=True, logy=True, slopes=(1.0, 2.0))])})
    return {"set": rs, "file": bench.path.name, "figures": figures, "table": table}


# -- work-depth ------------------------------------------------------------------------------------------


def rebuild_schedule(kind: str, n: int) -> schedules.Schedule | None:
    """The schedule a backend declares, rebuilt with ``implementations.schedule`` (None if the kind is unknown)."""
    if kind in SCHEDULE_BUILDERS:
        return SCHEDULE_BUILDERS[kind](n)
    match = re.fullmatch(r"blocked p=(\d+) \+ (pairwise|halving) tree", kind)
    return schedules.blocked(n, int(match[1]), match[2]) if match else None


def n_grid(n_max: int) -> list[int]:
    """n = 2, 3, 4, 6, 8, 12, ... up to ``n_max``: powers of two and the non-powers between them."""
    grid, p = [], 2
    while p <= n_max:
        grid += [p] + ([p * 3 // 2] if p * 3 // 2 <= n_max else [])
        p *= 2
    return sorted(set(grid))


def work_depth(rs: ResultSet, colors: dict[str, str]) -> dict[str, Any] | None:
    """W and D against n for each reduction backend: harness figures from WD cases' metrics, declared
    schedules rebuilt over n, and Brent's bound ``T_p <= W/p + D`` against a simulated greedy schedule."""
    measured: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    kinds: dict[str, str] = {}
    conf = rs.conformance
    if conf is None:
        return None
    for c in conf.cases:
        m = c.get("metrics")
        is_wd = str(c.get("clause", "")).startswith("WD")
        if is_wd and isinstance(m, dict) and all(is_number(m.get(k)) for k in "nWD"):
            measured[row_label(c)].append((int(m["n"]), int(m["W"]), int(m["D"])))
            if m.get("schedule"):
                kinds[row_label(c)] = str(m["schedule"])
    for name, entry in conf.backends.items():
        declared = (entry.get("capabilities") or {}).get("reduce_schedule")
        if declared and not any(row.startswith(f"{name}@") for row in kinds):
            kinds[name] = str(declared)
    rows = sorted(set(measured) | set(kinds))
    if not rows:
        return None
    w_series, d_series, brent = [], [], []
    for row in rows:
        color = colors.get(row.rsplit("@", 1)[0])
        kind = kinds.get(row, "undeclared")
        pts = sorted(set(measured.get(row, [])))
        if pts:
            ns = [p[0] for p in pts]
            w_series.append(charts.Series(f"{row} (harness)", ns, [p[1] for p in pts], color, "points"))
            d_series.append(charts.Series(f"{row} (harness)", ns, [p[2] for p in pts], color, "points"))
        n_max = max([p[0] for p in pts] or [1024])
        grid = n_grid(min(max(n_max, 64), SIMULATE_MAX_N))
        built = [(n, rebuild_schedule(kind, n)) for n in grid]
        if all(s is not None for _, s in built):
            w_series.append(charts.Series(f"{row}: {kind}", grid, [s.work for _, s in built], color))
            d_series.append(charts.Series(f"{row}: {kind}", grid, [s.depth for _, s in built], color))
        sched = rebuild_schedule(kind, n_max) if n_max <= SIMULATE_MAX_N else None
        if sched is not None:
            work, depth = sched.work, sched.depth
        elif pts:
            work, depth = pts[-1][1], pts[-1][2]
        else:
            continue
        steps = []
        for p in BRENT_P:
            bound = work / p + depth
            greedy = sched.greedy_time(p) if sched else None
            steps.append({"greedy": "—" if greedy is None else greedy, "bound": fmt_num(bound, 5),
                          "holds": None if greedy is None else greedy <= bound})
        brent.append({"row": row, "kind": kind, "n": n_max, "W": work, "D": depth, "steps": steps})
    chart = charts.line_chart([
        charts.Panel("work W (additions)", w_series, "n", "W", logx=True, logy=True),
        charts.Panel("depth D (longest chain)", d_series, "n", "D", logx=True, logy=True),
    ], width=4.2)
    return {"set": rs, "chart": chart, "brent": brent, "p": BRENT_P}


# -- history (asv) ---------------------------------------------------------------------------------------


def history(hist: AsvHistory, output: Path) -> dict[str, Any]:
    """Copy asv's published pages into the site and chart headline benchmarks over commits per machine."""
    link = None
    if hist.html_dir is not None:
        shutil.copytree(hist.html_dir, output / "asv")
        link = "asv/index.html"
    machines = []
    for machine in sorted({r.machine for r in hist.runs}):
        runs = [r for r in hist.runs if r.machine == machine]
        names = sorted({k for r in runs for k in r.values})
        headline = [n for n in names if n.rsplit(".", 1)[-1].startswith("track_")
                    and any(u in n.lower() for u in ("tflops", "gbps"))] or names
        headline = sorted(headline, key=lambda n: -sum(r.values.get(n) is not None for r in runs))[:8]
        commits = list(dict.fromkeys(r.commit for r in runs))  # in date order
        series, table = [], []
        for name in sorted(headline):
            pts = [(r, r.values[name]) for r in runs if r.values.get(name) is not None]
            if not pts:
                continue
            first = pts[0][1]
            series.append(charts.Series(name, [commits.index(r.commit) for r, _ in pts],
                                        [v / first if first else math.nan for _, v in pts]))
            table.append({"name": name, "unit": hist.units.get(name.split(" [")[0], ""), "first": fmt_num(first),
                          "last": fmt_num(pts[-1][1]), "commit": pts[-1][0].commit[:12],
                          "change": f"{pts[-1][1] / first - 1:+.1%}" if first else "—", "points": len(pts)})
        dates = {r.commit: dt.datetime.fromtimestamp(r.date_ms / 1e3, dt.timezone.utc) for r in runs}
        chart = charts.line_chart([charts.Panel(
            f"{machine}: headline benchmarks", series, "commit", "relative to the first commit",
            hlines=[(1.0, "first commit")],
            xticklabels=[f"{c[:8]} {dates[c]:%m-%d}" for c in commits])], width=6.0) if series else None
        machines.append({"machine": machine, "chart": chart, "table": table, "commits": len(commits)})
    return {"link": link, "machines": machines, "problems": hist.problems, "path": str(hist.path)}


# -- rendering -------------------------------------------------------------------------------------------


def environment() -> jinja2.Environment:
    """The Jinja2 environment: autoescape always on, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["code_spans"] = code_spans
    env.filters["by_severity"] = by_severity
    return env


def by_severity(counts: Counter[str]) -> list[tuple[str, int]]:
    """``(status, count)`` pairs, most severe status first."""
    return sorted(counts.items(), key=lambda kv: (status_rank(kv[0]), kv[0]))


def code_spans(text: str) -> Markup:
    """Escape ``text`` and show its backtick-quoted parts as ``<code>``."""
    parts = str(text).split("`")
    return Markup("").join(Markup("<code>{}</code>").format(p) if i % 2 else Markup.escape(p)
                           for i, p in enumerate(parts))


class Site:
    """Writes the pages of one report into ``output`` with the context every page shares."""

    def __init__(self, output: Path, sets: list[ResultSet], spec: Spec) -> None:
        self.output = output
        self.env = environment()
        self.common = {
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "spec_problems": spec.problems,
        }
        self.all_provenance = provenance_columns(sets)

    def write(self, template: str, rel: str, provenance: list[dict[str, Any]] | None = None, **ctx: Any) -> Path:
        """Render ``template`` to ``output/rel``; links inside are relative to the output root via ``root``."""
        path = self.output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        root = "../" * rel.count("/")
        html = self.env.get_template(template).render(
            root=root, provenance=self.all_provenance if provenance is None else provenance, **self.common, **ctx)
        path.write_text(html, encoding="utf-8")
        return path


def build_site(sets: list[ResultSet], output: Path, *, spec: Spec, asv: AsvHistory | None = None) -> Path:
    """Write the whole report for ``sets`` into ``output`` (replacing an earlier build) and return index.html."""
    output.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        target = output / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    shutil.copytree(HERE / "static", output / "static")
    backends = {str(r.get("backend")) for rs in sets if rs.conformance for r in rs.conformance.cases}
    backends |= {str(r.get("backend")) for rs in sets for b in rs.benches for r in b.records + b.memory_scaling}
    backends |= {name for rs in sets if rs.conformance for name in rs.conformance.backends}
    colors = charts.palette(sorted(backends))
    site = Site(output, sets, spec)
    grouped = {rs.slug: cases_by_row_and_clause(rs) for rs in sets}
    tables, clause_ids = matrix(sets, grouped, spec)

    for rs in sets:
        for row, by_clause in grouped[rs.slug].items():
            for cid, cases in by_clause.items():
                rows = case_rows(cases)
                site.write("cases.html.j2", cases_href(rs, row, cid), provenance=provenance_columns([rs]),
                           rs=rs, row=row, cid=cid, clause=spec.clauses.get(cid), clause_link=clause_href(cid),
                           cases=rows, has_metrics=any(r["metrics"] for r in rows),
                           has_worst=any(r["worst"] for r in rows), counts=Counter(r["status"] for r in rows))

    for cid in clause_ids:
        status = []
        for rs in sets:
            for row, by_clause in sorted(grouped[rs.slug].items()):
                if cid in by_clause:
                    status.append({"set": rs.label, "row": row, "href": cases_href(rs, row, cid),
                                   "counts": Counter(str(c.get("status")) for c in by_clause[cid])})
        site.write("clause.html.j2", clause_href(cid), cid=cid, clause=spec.clauses.get(cid),
                   area=spec.areas.get(cid.split("-")[0], ""), tests=spec.tests.get(cid, []), status=status)

    benches = [(rs, b) for rs in sets for b in rs.benches]
    return site.write(
        "index.html.j2", "index.html", sets=sets, tables=tables, statuses=STATUSES, words=STATUS_WORDS,
        precision=precision(sets, colors),
        speed=[speed(rs, b, colors) for rs, b in benches if b.records],
        memory=[m for rs, b in benches if (m := memory(rs, b, colors))],
        work_depth=[w for rs in sets if (w := work_depth(rs, colors))],
        history=history(asv, output) if asv else None,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``attnspec report``."""
    parser = argparse.ArgumentParser(prog="attnspec report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conformance", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                        help="conformance JSON-lines file(s), one result set each")
    parser.add_argument("--bench", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                        help="bench JSON file(s); each joins the result set of the same machine")
    parser.add_argument("--label", nargs="+", action="extend", default=[], metavar="NAME",
                        help="names of the result sets in order: conformance files first, then bench files "
                        "of other machines (default: GPU or CPU and host name)")
    parser.add_argument("--asv", type=Path, metavar="DIR",
                        help="asv html directory, results directory, or a folder holding either (e.g. .asv)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"where to write the site (default {DEFAULT_OUTPUT}/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the report; 1 if a named input file or directory does not exist (the report is built anyway)."""
    args = parse_args(argv)
    missing = [p for p in [*args.conformance, *args.bench, *([args.asv] if args.asv else [])] if not p.exists()]
    for path in missing:
        print(f"attnspec report: {path}: no such file or directory", file=sys.stderr)
    sets = result_sets(args.conformance, args.bench, args.label)
    asv = load_asv(args.asv) if args.asv else None
    index = build_site(sets, args.output, spec=load_spec(), asv=asv)
    for rs in sets:
        for problem in rs.problems:
            print(f"attnspec report: {rs.label}: {problem}", file=sys.stderr)
    print(f"report: {index}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
