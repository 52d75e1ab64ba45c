"""The one JSON codec of the result files (docs/results-format.md): typed records (``conformance.records``) to
JSON and back, for the conformance JSON lines and the bench JSON.

Every record and every bench file carries ``"schema": SCHEMA_VERSION``. Files without it are schema 1 (written
before the field existed) and read the same way; a schema newer than this reader's is read field by field and
noted. JSON has no infinities or NaN: a non-finite number is written as the string ``"inf"``, ``"-inf"`` or
``"nan"``; the reader also takes JSON null (how schema-1 bench files wrote them) as an absent value.

Decoding never raises: a record whose identity (id, backend, status; op, backend, device) is missing is left
out and a field of the wrong type is read as absent, each noted in a problem line (``conformance.fields``).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from conformance.fields import Fields, Record, describe
from conformance.records import (
    BackendListing,
    BenchPart,
    BenchRecord,
    BenchRun,
    CaseRecord,
    CaseStart,
    Ceilings,
    ConformanceRecord,
    Ended,
    EndRecord,
    MemoryRecord,
    Provenance,
    RunRecord,
    TimedCall,
)
from conformance.results import Status

#: the version of the format this code writes; schema 1 is every file written before records carried one
SCHEMA_VERSION = 2
T = TypeVar("T")

# -- encoding ---------------------------------------------------------------------------------------------


def json_key(f: Any) -> str:
    """The JSON key of a dataclass field: its name, or ``metadata["json"]``."""
    return f.metadata.get("json", f.name)


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses as objects (under their JSON keys), enums as their values,
    non-finite floats as ``"inf"``/``"-inf"``/``"nan"``."""
    if is_dataclass(value) and not isinstance(value, type):
        return {json_key(f): to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {to_json(k) if isinstance(k, Enum) else str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def encode(record: ConformanceRecord) -> Record:
    """One line of a conformance results file as a JSON object: ``kind`` and ``schema`` first."""
    body = to_json(record)
    if isinstance(record, RunRecord):
        kind = "resume" if body.pop("resumed") else "run"
    elif isinstance(record, CaseStart | CaseRecord):
        kind = "start" if isinstance(record, CaseStart) else "case"
        body["area"] = record.area
    else:
        kind = "end"
    return {"kind": kind, "schema": SCHEMA_VERSION} | body


def _fallback(value: object) -> object:
    """A value of no JSON type in a free-form field (metrics): a NumPy scalar as its number, else its ``str``."""
    if hasattr(value, "__index__"):
        return value.__index__()
    if hasattr(value, "__float__"):
        return to_json(float(value))  # type: ignore[arg-type]
    return str(value)


def dumps(record: ConformanceRecord) -> str:
    """One line of a conformance results file (no newline)."""
    return json.dumps(encode(record), allow_nan=False, default=_fallback)


def encode_bench(run: BenchRun) -> Record:
    """A bench file as a JSON object."""
    return {"kind": "bench", "schema": SCHEMA_VERSION} | to_json(run)


# -- decoding ---------------------------------------------------------------------------------------------

_READERS = {str: Fields.text, str | None: Fields.text, float | None: Fields.number, int | None: Fields.integer,
            bool | None: Fields.flag}


def _build(cls: type[T], f: Fields, **given: Any) -> T:
    """An instance of the record class ``cls``: the ``given`` fields as they are, every other field read from
    ``f`` by its declared type (text, number, integer, flag)."""
    hints = get_type_hints(cls)
    values = dict(given)
    for spec in fields(cls):  # type: ignore[arg-type]
        if spec.name not in values:
            values[spec.name] = _READERS[hints[spec.name]](f, json_key(spec))
    return cls(**values)


def check_schema(rec: Record, where: str, problems: list[str]) -> None:
    """Note a record whose schema is not one this reader knows."""
    schema = rec.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA_VERSION:
        problems.append(f"{where}: schema {describe(schema)} is not one this reader knows (1 to {SCHEMA_VERSION}); "
                        "its fields are read as far as they match")


def decode_provenance(value: object, where: str, problems: list[str]) -> Provenance:
    """The provenance in ``value``; a value that is not an object, or a wrong field, is noted."""
    if value is None:
        return Provenance()
    if not isinstance(value, dict):
        problems.append(f"{where}: provenance is {describe(value)}, not an object; left out")
        return Provenance()
    f = Fields(value, f"{where}: provenance")
    found = _build(Provenance, f)
    if found.timestamp is not None and f.time("timestamp") is None:
        problems.append(f"{where}: provenance timestamp {describe(found.timestamp)} is not an ISO-8601 time")
    problems += f.problems
    return found


def decode_listings(f: Fields) -> list[BackendListing]:
    """The backend listing of a run record or bench file (entries without a name are left out, noted)."""
    listings = []
    for entry in f.records("backends"):
        g = Fields(entry, f"{f.where}: backend {describe(entry.get('name'))}")
        if g.text("name"):
            caps = g.mapping("capabilities") if entry.get("capabilities") is not None else None
            listings.append(_build(BackendListing, g, capabilities=caps))
        else:
            g.problems.append(f"{g.where}: a backend without a name; left out")
        f.problems += g.problems
    return listings


def _device_from_id(case_id: str, backend: str) -> str | None:
    """The device named in a test id ``CLAUSE[backend-device-...]``."""
    inner = case_id.partition("[")[2]
    if inner.startswith(backend + "-"):
        return inner[len(backend) + 1:].split("-", 1)[0] or None
    return None


def _case_identity(f: Fields) -> dict[str, str] | None:
    """id, clause, backend and device of a start or case record (clause and device default to what the id
    names), or None, noted, when one is missing."""
    case_id, backend = f.text("id"), f.text("backend")
    clause = f.text("clause") or (case_id.split("[", 1)[0] if case_id else None)
    device = f.text("device") or (_device_from_id(case_id, backend) if case_id and backend else None)
    found = {"id": case_id, "clause": clause, "backend": backend, "device": device}
    missing = [name for name, value in found.items() if not value]
    if missing:
        f.problems.append(f"{f.where}: a case record without {', '.join(missing)}; left out")
        return None
    return found  # type: ignore[return-value]


def _decode_case(f: Fields) -> CaseRecord | None:
    """The case result in ``f``, or None, noted, without its identity or a status of the format."""
    identity = _case_identity(f)
    status = Status.parse(f.record.get("status"))
    if status is None:
        f.problems.append(f"{f.where}: status {describe(f.record.get('status'))} is not a status of the format")
    if identity is None or status is None:
        return None
    return _build(CaseRecord, f, **identity, status=status, metrics=f.mapping("metrics"))


def decode_end(f: Fields) -> EndRecord:
    """An end record; counts under names that are not statuses are noted and left out."""
    counts: dict[Status, int] = {}
    for name, value in f.mapping("counts").items():
        status = Status.parse(name)
        if status is None or not isinstance(value, int) or isinstance(value, bool):
            f.problems.append(f"{f.where}: counts.{describe(name)} = {describe(value)} is not a status count")
        else:
            counts[status] = value
    ended = f.text("ended")
    return _build(EndRecord, f, run_id=f.text("run_id") or "", counts=counts,
                  ended=Ended(ended) if ended in {e.value for e in Ended} else None)


def decode(rec: Record, where: str, problems: list[str]) -> ConformanceRecord | None:
    """The record of one conformance JSON line, or None (noted in ``problems``) when it is not one."""
    f = Fields(rec, where)
    check_schema(rec, where, problems)
    kind = rec.get("kind")
    found: ConformanceRecord | None = None
    if kind in ("run", "resume"):
        found = _build(RunRecord, f, run_id=f.text("run_id") or "", argv=f.strings("argv"),
                       provenance=decode_provenance(rec.get("provenance"), where, problems),
                       backends=decode_listings(f), resumed=kind == "resume")
    elif kind == "start":
        identity = _case_identity(f)
        found = _build(CaseStart, f, **identity) if identity else None
    elif kind == "case":
        found = _decode_case(f)
    elif kind == "end":
        found = decode_end(f)
    else:
        f.problems.append(f"{where}: kind {describe(kind)} is not a kind of the format; skipped")
    problems += f.problems
    return found


def read_text(path: Path) -> str:
    """A results file's text; a name ending in ``.gz`` is read through gzip (the committed evidence is stored
    compressed). Undecodable bytes become U+FFFD, so a damaged file still yields its readable lines."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read().decode("utf-8", errors="replace")
    return path.read_text(encoding="utf-8", errors="replace")


def read_lines(path: Path) -> tuple[list[tuple[int, ConformanceRecord]], list[str]]:
    """The records of a conformance JSON-lines file with their line numbers, and a problem line for each line
    that is not a record (a line cut by a crash, say). Raises OSError when the file cannot be read."""
    lines = read_text(path).splitlines()
    records: list[tuple[int, ConformanceRecord]] = []
    problems: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            where = "the last line (truncated?)" if lineno == len(lines) else f"line {lineno}"
            problems.append(f"{where} is not valid JSON and was skipped")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {lineno} is not a JSON object and was skipped")
        elif (record := decode(obj, f"line {lineno}", problems)) is not None:
            records.append((lineno, record))
    return records, problems


def read_records(path: Path) -> list[ConformanceRecord]:
    """Every readable record of a conformance results file, in order (none when it does not exist)."""
    return [record for _, record in read_lines(path)[0]] if path.exists() else []


def done_ids(path: Path) -> set[str]:
    """Ids that already have a result in a results file (for ``--resume``)."""
    return {r.id for r in read_records(path) if isinstance(r, CaseRecord)}


def _bench_record(f: Fields) -> BenchRecord | None:
    """A timed or gated workload, or None, noted, without op, backend or device."""
    identity = _bench_identity(f, "record")
    if identity is None:
        return None
    gate = f.text("gate")
    if gate is not None and Status.parse(gate) is None:
        f.problems.append(f"{f.where}: gate {describe(gate)} is not a status of the format; left out")
    timed, calls = f.text("timed"), {c.value: c for c in TimedCall}
    if timed is not None and timed not in calls:
        f.problems.append(f"{f.where}: timed {describe(timed)} is not a call of the format; left out")
    return _build(BenchRecord, f, **identity, dtype=f.text("dtype") or "?", workload=f.scalars("workload"),
                  gate=Status.parse(gate), errors=f.number_map("errors"), vs=f.number_map("vs"),
                  timed=calls.get(timed))


def _memory_record(f: Fields) -> MemoryRecord | None:
    """A memory series, or None, noted, without op, backend, device, or its two lists."""
    identity = _bench_identity(f, "memory series")
    sizes, peaks = f.record.get("S"), f.record.get("peak_extra_bytes")
    if not (isinstance(sizes, list) and isinstance(peaks, list)):
        f.problems.append(f"{f.where}: S and peak_extra_bytes are not both lists; left out")
        return None
    if identity is None:
        return None
    return _build(MemoryRecord, f, **identity, workload=f.scalars("workload"), S=f.numbers("S"),
                  peak_extra_bytes=f.numbers("peak_extra_bytes"))


def _bench_part(f: Fields) -> BenchPart:
    """One process of a spread bench run: its options and ceilings."""
    c = Fields(f.mapping("ceilings"), f"{f.where}: ceilings")
    part = BenchPart(argv=f.strings("argv"), ceilings=_build(Ceilings, c))
    f.problems += c.problems
    return part


def _bench_identity(f: Fields, kind: str) -> dict[str, str] | None:
    """op, backend and device of a bench record, or None, noted, when one is missing."""
    found = {"op": f.text("op"), "backend": f.text("backend"), "device": f.text("device")}
    missing = [k for k, v in found.items() if not v]
    if missing:
        f.problems.append(f"{f.where}: a {kind} without {', '.join(missing)}; left out")
        return None
    return found  # type: ignore[return-value]


def _decoded(f: Fields, key: str, read: Callable[[Fields], T | None]) -> list[T]:
    """The records of the list ``key`` that ``read`` decodes; its problems join ``f``'s."""
    found = []
    for i, rec in enumerate(f.records(key)):
        part = Fields(rec, f"{key}[{i}]")
        if (record := read(part)) is not None:
            found.append(record)
        f.problems += part.problems
    return found


def decode_bench(data: Record, problems: list[str]) -> BenchRun:
    """The bench run in a bench file's JSON object; every problem is noted (a run that was interrupted or did
    not finish too), whatever is readable kept."""
    check_schema(data, "file", problems)
    f = Fields(data, "file")
    c = Fields(f.mapping("ceilings"), "ceilings")
    run = _build(BenchRun, f, provenance=decode_provenance(data.get("provenance"), "file", problems),
                 argv=f.strings("argv"), ceilings=_build(Ceilings, c), backends=decode_listings(f),
                 records=_decoded(f, "records", _bench_record),
                 memory_scaling=_decoded(f, "memory_scaling", _memory_record), interrupted=bool(f.flag("interrupted")),
                 parts=_decoded(f, "parts", _bench_part))
    problems += f.problems + c.problems + ([f"note: {run.note}"] if run.note else [])
    if run.interrupted:
        problems.append("the benchmark run was interrupted: showing the records it wrote")
    elif "finished" in data and not run.finished:
        problems.append("the benchmark run did not finish: showing the records it wrote")
    return run


# -- files ------------------------------------------------------------------------------------------------


def write_bench(path: Path, run: BenchRun) -> None:
    """Write a bench file atomically (a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(encode_bench(run), indent=1, allow_nan=False, default=_fallback))
    os.replace(tmp, path)


def read_bench(path: Path, problems: list[str]) -> BenchRun:
    """The bench run in a bench file; a file that cannot be read or is not a JSON object gives an empty run
    and a problem line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        problems.append(f"cannot be read: {exc.strerror or exc}")
        return BenchRun()
    except json.JSONDecodeError as exc:
        problems.append(f"is not valid JSON ({exc.msg} at line {exc.lineno}): no benchmark results read")
        return BenchRun()
    except RecursionError:
        problems.append("is nested too deeply to read: no benchmark results read")
        return BenchRun()
    if not isinstance(data, dict):
        problems.append("is not a JSON object: no benchmark results read")
        return BenchRun()
    if data.get("kind") != "bench":
        problems.append(f'has kind {describe(data.get("kind"))}, expected "bench"')
    return decode_bench(data, problems)
