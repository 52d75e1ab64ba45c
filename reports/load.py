"""Reading the result files the report is built from: conformance JSON lines, bench JSON and asv results.

Readers do not raise on bad content. A truncated last line, a run that crashed before its ``end`` record or a
file that is not JSON becomes a *problem* of that input (shown in the report) and everything readable still
renders. Formats: docs/results-format.md (conformance, provenance) and the bench JSON of ``attnspec bench``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Case statuses of the conformance format, most severe first (the order the report lists and colours them).
STATUSES: tuple[str, ...] = (
    "crashed", "timeout", "interrupted", "error", "failed", "xpass", "xfail", "passed", "skipped", "unsupported",
    "not_implemented",
)

#: asv stores parameter values as their repr; the quotes are dropped in series names
QUOTES = "'\""
#: a start with no result: the supervisor records real crashes itself, so this one was stopped from outside
#: (a time limit, Ctrl-C) or died unsupervised
INTERRUPTED_REASON = "the run stopped during this case: its start record has no result"

Record = dict[str, Any]


@dataclass
class Conformance:
    """The cases of one conformance JSON-lines file (all runs in it; a later result for an id replaces one)."""

    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the backend listings of the run records, by name (availability, reason, capabilities)
    backends: dict[str, Record] = field(default_factory=dict)
    cases: list[Record] = field(default_factory=list)
    runs: int = 0
    #: the last run in the file wrote its ``end`` record
    finished: bool = False
    problems: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        """Cases per status."""
        return Counter(str(c.get("status")) for c in self.cases)


@dataclass
class Bench:
    """One bench JSON file: provenance, the machine's measured ceilings, timed records, memory scaling."""

    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    ceilings: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    memory_scaling: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


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


@dataclass
class ResultSet:
    """The results of one machine shown side by side with others: a conformance file and/or bench files (a
    GPU run may write several, e.g. attention and the row operations, each with the ceilings it measured)."""

    label: str
    slug: str
    conformance: Conformance | None = None
    benches: list[Bench] = field(default_factory=list)

    @property
    def provenance(self) -> dict[str, Any]:
        """The conformance run's provenance, else the first bench run's."""
        if self.conformance and self.conformance.provenance:
            return self.conformance.provenance
        return self.benches[0].provenance if self.benches else {}

    @property
    def sources(self) -> list[Conformance | Bench]:
        """The set's files: its conformance file first, then its bench files in the order given."""
        return ([self.conformance] if self.conformance else []) + self.benches

    @property
    def problems(self) -> list[str]:
        """Problems found while reading this set's files, each prefixed with the file name."""
        return [f"{src.path.name}: {p}" for src in self.sources for p in src.problems]


def read_json_lines(path: Path) -> tuple[list[Record], list[str]]:
    """The JSON objects of a JSON-lines file, and a problem line for each line that is not one."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[Record] = []
    problems: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            where = "the last line (truncated?)" if lineno == len(lines) else f"line {lineno}"
            problems.append(f"{where} is not valid JSON and was skipped")
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            problems.append(f"line {lineno} is not a JSON object and was skipped")
    return records, problems


def _device_from_id(case_id: str, backend: str) -> str:
    """The device named in a test id ``CLAUSE[backend-device-...]``, or ``"?"``."""
    inner = case_id.partition("[")[2]
    if inner.startswith(backend + "-"):
        return inner[len(backend) + 1:].split("-", 1)[0] or "?"
    return "?"


def _interrupted(start: Record) -> Record:
    """The case record standing for a start record whose case never finished."""
    case_id = str(start.get("id", "?"))
    backend = str(start.get("backend", "?"))
    clause = case_id.split("[", 1)[0]
    return {
        "kind": "case", "id": case_id, "clause": clause, "area": clause.split("-", 1)[0], "backend": backend,
        "device": _device_from_id(case_id, backend), "status": "interrupted", "reason": INTERRUPTED_REASON,
    }


def load_conformance(path: Path) -> Conformance:
    """Read a conformance JSON-lines file; a start without its case counts as that case interrupted."""
    result = Conformance(Path(path))
    try:
        records, result.problems = read_json_lines(result.path)
    except OSError as exc:
        result.problems.append(f"cannot be read: {exc.strerror or exc}")
        return result
    cases: dict[tuple[str, str], Record] = {}
    pending: dict[tuple[str, str], Record] = {}

    def close_run() -> None:
        for key, start in pending.items():
            cases[key] = _interrupted(start)
        pending.clear()

    for rec in records:
        kind = rec.get("kind")
        key = (str(rec.get("id")), str(rec.get("backend")))
        if kind in ("run", "resume"):
            close_run()
            result.runs += 1
            result.finished = False
            result.provenance = rec.get("provenance") or {}
            for entry in rec.get("backends") or []:
                if isinstance(entry, dict) and "name" in entry:
                    result.backends[str(entry["name"])] = entry
        elif kind == "start":
            pending[key] = rec
        elif kind == "case":
            pending.pop(key, None)
            cases.pop(key, None)  # a re-run's result replaces the old one and moves to the end
            cases[key] = rec
        elif kind == "end":
            result.finished = True
    close_run()
    result.cases = list(cases.values())
    if not records:
        result.problems.append("no records: the run wrote nothing")
    elif not result.finished:
        result.problems.append("the run did not finish (no end record): showing the cases it recorded")
    return result


def _list_of_dicts(value: object) -> list[Record]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def load_bench(path: Path) -> Bench:
    """Read a bench JSON file (``{"kind": "bench", "provenance", "ceilings", "records", "memory_scaling"}``)."""
    bench = Bench(Path(path))
    try:
        data = json.loads(bench.path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        bench.problems.append(f"cannot be read: {exc.strerror or exc}")
        return bench
    except json.JSONDecodeError as exc:
        bench.problems.append(f"is not valid JSON ({exc.msg} at line {exc.lineno}): no benchmark results read")
        return bench
    if not isinstance(data, dict):
        bench.problems.append("is not a JSON object: no benchmark results read")
        return bench
    if data.get("kind") != "bench":
        bench.problems.append(f'has kind {data.get("kind")!r}, expected "bench"')
    bench.provenance = data.get("provenance") or {}
    bench.ceilings = data.get("ceilings") or {}
    bench.records = _list_of_dicts(data.get("records"))
    bench.memory_scaling = _list_of_dicts(data.get("memory_scaling"))
    if isinstance(data.get("note"), str):
        bench.problems.append(f"note: {data['note']}")
    if data.get("interrupted"):
        bench.problems.append("the benchmark run was interrupted: showing the records it wrote")
    elif "finished" in data and not data["finished"]:
        bench.problems.append("the benchmark run did not finish: showing the records it wrote")
    return bench


def headline(value: object) -> float | None:
    """One number for an asv result: the value, or the geometric mean of a parametrised benchmark's values.

    Failed or skipped combinations (None, NaN) are left out; None when nothing is left, the arithmetic mean
    when a value is not positive.
    """
    items = value if isinstance(value, list) else [value]
    nums = [float(v) for v in items if isinstance(v, (int, float)) and math.isfinite(v)]
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


def load_asv(path: Path) -> AsvHistory:
    """Find asv's published pages and results under ``path`` and read every results file (asv format 2)."""
    hist = AsvHistory(Path(path))
    hist.html_dir, hist.results_dir = _asv_dirs(hist.path)
    if hist.html_dir is None and hist.results_dir is None:
        hist.problems.append(f"{path}: neither asv html (index.html + index.json) nor asv results found")
        return hist
    if hist.results_dir is None:
        return hist
    try:
        meta = json.loads((hist.results_dir / "benchmarks.json").read_text(encoding="utf-8"))
        hist.units = {k: str(v.get("unit", "")) for k, v in meta.items() if isinstance(v, dict)}
    except (OSError, json.JSONDecodeError, AttributeError):
        hist.units = {}
    for file in sorted(hist.results_dir.glob("*/*.json")):
        if file.name in ("machine.json", "benchmarks.json"):
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            columns = data["result_columns"]
            col, pcol = columns.index("result"), columns.index("params")
            values: dict[str, float | None] = {}
            for name, row in data["results"].items():
                values.update(split_by_first_param(name, row[col] if len(row) > col else None,
                                                   row[pcol] if len(row) > pcol else None))
            hist.runs.append(AsvRun(
                machine=str(data.get("params", {}).get("machine") or file.parent.name),
                commit=str(data["commit_hash"]), date_ms=float(data["date"]),
                env_name=str(data.get("env_name", "")), values=values,
            ))
        except (OSError, json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
            hist.problems.append(f"{file.parent.name}/{file.name}: not an asv results file ({exc!r})")
    hist.runs.sort(key=lambda r: (r.machine, r.date_ms))
    return hist


def provenance_label(prov: dict[str, Any]) -> str:
    """A short name for the machine a result was measured on: its GPU (or CPU) and host name."""
    device = prov.get("gpu") or prov.get("cpu") or prov.get("platform") or "unknown machine"
    host = prov.get("hostname")
    return f"{device} ({host})" if host else str(device)


def slugify(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``._-``), never empty, at most 48 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:48] or "x"


def machine_key(prov: dict[str, Any]) -> tuple[str, str] | None:
    """What identifies the machine of a result file: host name and GPU (None without a host name)."""
    return (str(prov["hostname"]), str(prov.get("gpu"))) if prov.get("hostname") else None


def result_sets(conformance: list[Path], bench: list[Path], labels: list[str]) -> list[ResultSet]:
    """One result set per conformance file; a bench file joins the first set measured on the same machine
    (host name and GPU in the provenance) at the same commit, else the first set of that machine without
    bench files, else it makes a set of its own. So one run's several bench files share its set, and runs of
    one machine at two commits stay apart.

    ``labels`` name the sets in that order; without a label a set is named after its provenance, and equal
    names get a ``#2``, ``#3`` suffix.
    """
    sets = [ResultSet(label="", slug="", conformance=load_conformance(path)) for path in conformance]
    for path in bench:
        loaded = load_bench(path)
        key = machine_key(loaded.provenance)
        mine = [rs for rs in sets if key and machine_key(rs.provenance) == key]
        commit = loaded.provenance.get("commit")
        home = next((rs for rs in mine if commit and rs.provenance.get("commit") == commit),
                    next((rs for rs in mine if not rs.benches), None))
        if home is None:
            sets.append(ResultSet(label="", slug="", benches=[loaded]))
        else:
            home.benches.append(loaded)
    seen: Counter[str] = Counter()
    for i, rs in enumerate(sets):
        label = labels[i] if i < len(labels) else provenance_label(rs.provenance)
        seen[label] += 1
        rs.label = label if seen[label] == 1 else f"{label} #{seen[label]}"
        rs.slug = f"set{i + 1}-{slugify(rs.label)}"
    return sets
