"""Reading asv's history: its published html directory and its results files (asv 0.6, results format 2).

A results file is ``results/<machine>/<commit>-<env>.json`` with ``commit_hash``, ``date`` (ms since the
epoch), ``result_columns`` and ``results``. A file whose commit is not a hexadecimal hash, whose date is not
a finite number, or that is not such a file at all is a problem of the history; the reader never raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from conformance.fields import Record, as_number, describe, is_finite

#: asv stores parameter values as their repr; the quotes are dropped in series names
QUOTES = "'\""
COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")


@dataclass
class AsvRun:
    """One asv results file: a commit on a machine, with one headline number per benchmark."""

    machine: str
    commit: str
    date_ms: float
    env_name: str
    #: series name -> value: per benchmark, or per benchmark and first parameter (``name [torch]``) for a
    #: parametrised one, the geometric mean over the other parameters; None if every combination failed
    values: dict[str, float | None]


@dataclass
class AsvHistory:
    """What ``--asv DIR`` points at: asv's published html directory and/or its results directory."""

    path: Path
    html_dir: Path | None = None
    results_dir: Path | None = None
    runs: list[AsvRun] = field(default_factory=list)
    #: benchmark name -> unit, from the results directory's benchmarks.json
    units: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def headline(value: object) -> float | None:
    """One number for an asv result: the value, or the geometric mean of a parametrised benchmark's values.

    Failed or skipped combinations (None, NaN) are left out; None when nothing is left, the arithmetic mean
    when a value is not positive.
    """
    items = value if isinstance(value, list) else [value]
    nums = [float(v) for v in items if is_finite(v)]
    if not nums:
        return None
    if min(nums) <= 0:
        return sum(nums) / len(nums)
    return math.exp(sum(math.log(v) for v in nums) / len(nums))


def split_by_first_param(name: str, result: object, params: object) -> dict[str, float | None]:
    """The headline numbers of one asv benchmark: one per value of its first parameter (usually the backend),
    named ``name [value]``, when the results list matches the parameter grid; else one for ``name``."""
    grid = params if isinstance(params, list) and params and all(isinstance(p, list) and p for p in params) else None
    if grid is None or not isinstance(result, list) or len(result) != math.prod(len(p) for p in grid):
        return {name: headline(result)}
    per_first = len(result) // len(grid[0])  # asv orders results as itertools.product of the parameters
    return {f"{name} [{str(value).strip(QUOTES)}]": headline(result[i * per_first:(i + 1) * per_first])
            for i, value in enumerate(grid[0])}


def _asv_dirs(path: Path) -> tuple[Path | None, Path | None]:
    """asv's html and results directories at or under ``path`` (asv's defaults are .asv/html, .asv/results)."""
    html = results = None
    for cand in (path, path / "html", path / "results", path / ".asv" / "html", path / ".asv" / "results"):
        if html is None and (cand / "index.html").is_file() and (cand / "index.json").is_file():
            html = cand
        if results is None and cand.is_dir() and any(cand.glob("*/machine.json")):
            results = cand
    return html, results


def _units(results_dir: Path) -> dict[str, str]:
    """Benchmark name -> unit from benchmarks.json (empty when it is missing or malformed)."""
    try:
        meta = json.loads((results_dir / "benchmarks.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return {str(k): v["unit"] for k, v in meta.items() if isinstance(v, dict) and isinstance(v.get("unit"), str)}


def parse_run(data: object, default_machine: str) -> AsvRun:
    """The run in one results file; ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    columns, results = data.get("result_columns"), data.get("results")
    if not isinstance(columns, list) or "result" not in columns or not isinstance(results, dict):
        raise ValueError("no result_columns with a result column, or no results object")
    commit, date = data.get("commit_hash"), as_number(data.get("date"))
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        raise ValueError(f"commit_hash {describe(commit)} is not a hexadecimal commit hash")
    if date is None or not math.isfinite(date) or not 0 <= date < 1e14:
        raise ValueError(f"date {describe(data.get('date'))} is not a time in ms since the epoch")
    col = columns.index("result")
    pcol = columns.index("params") if "params" in columns else None
    values: dict[str, float | None] = {}
    for name, row in results.items():
        row = row if isinstance(row, list) else []
        values.update(split_by_first_param(
            name, row[col] if len(row) > col else None,
            row[pcol] if pcol is not None and len(row) > pcol else None))
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    machine, env = params.get("machine"), data.get("env_name")
    return AsvRun(machine=machine if isinstance(machine, str) and machine else default_machine,
                  commit=commit, date_ms=date, env_name=env if isinstance(env, str) else "", values=values)


def load_asv(path: Path) -> AsvHistory:
    """Find asv's published pages and results under ``path`` and read every results file."""
    hist = AsvHistory(Path(path))
    hist.html_dir, hist.results_dir = _asv_dirs(hist.path)
    if hist.html_dir is None and hist.results_dir is None:
        hist.problems.append(f"{path}: neither asv html (index.html + index.json) nor asv results found")
        return hist
    if hist.results_dir is None:
        return hist
    hist.units = _units(hist.results_dir)
    for file in sorted(hist.results_dir.glob("*/*.json")):
        if file.name in ("machine.json", "benchmarks.json"):
            continue
        try:
            data: Record = json.loads(file.read_text(encoding="utf-8", errors="replace"))
            hist.runs.append(parse_run(data, file.parent.name))
        except (OSError, ValueError, RecursionError) as exc:
            hist.problems.append(f"{file.parent.name}/{file.name}: not an asv results file ({exc})")
    hist.runs.sort(key=lambda r: (r.machine, r.date_ms))
    return hist
