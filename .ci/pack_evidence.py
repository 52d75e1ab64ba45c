"""Store a GPU evidence folder as compact data: ``python .ci/pack_evidence.py OUTDIR``.

What it rewrites, losing no result:
- every ``*.jsonl`` (conformance results), stored gzip-compressed as ``NAME.jsonl.gz`` (the readers,
  ``conformance.codec.read_text``, take either): a ``start`` record is dropped where the same run records that
  case's result later (the result repeats every field of the start; a case started twice before its result is
  answered by it both times); a start with no result stays, since readers count it as the case interrupted. A
  run record's listing of a backend that an earlier run record of the file lists identically is dropped
  (readers keep each backend's listing by name). In case records, fields that are null are left out (readers
  take a missing optional field as null), and so is ``area`` (the clause's prefix); floats keep 6 significant
  digits (errors, bounds, durations: measurements no reader needs to more). Records are written compact, one
  per line; a line that is not a JSON object stays as it is.
- every ``*.json`` directly in OUTDIR (the ``attnspec bench`` files): the same value, written compact.
asv results (``OUTDIR/asv/``) are left as asv wrote them. Prints each file's size before and after.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

COMPACT = {"separators": (",", ":"), "ensure_ascii": False}


def _record(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def pack_conformance_lines(lines: list[str]) -> list[str]:
    """The lines of a conformance JSON-lines file without the start records that a later result answers."""
    records = [_record(line) for line in lines]
    answered: set[int] = set()
    open_starts: dict[tuple[str, str], list[int]] = {}
    for index, rec in enumerate(records):
        kind = rec.get("kind") if rec is not None else None
        if kind in ("run", "resume"):
            open_starts.clear()  # a start left open when its run ended was interrupted: keep it
        elif kind == "start":
            open_starts.setdefault((str(rec.get("id")), str(rec.get("backend"))), []).append(index)
        elif kind == "case":
            answered.update(open_starts.pop((str(rec.get("id")), str(rec.get("backend"))), []))
    packed, listed = [], []
    for index, (line, rec) in enumerate(zip(lines, records)):
        if index in answered:
            continue
        if rec is not None and rec.get("kind") in ("run", "resume") and isinstance(rec.get("backends"), list):
            rec = rec | {"backends": [b for b in rec["backends"] if b not in listed]}
            listed += rec["backends"]
        elif rec is not None and rec.get("kind") == "case":
            rec = _six_digits({k: v for k, v in rec.items() if v is not None and k != "area"})
        packed.append(json.dumps(rec, **COMPACT) if rec is not None else line)
    return packed


def _six_digits(value: object) -> object:
    """``value`` with every float rounded to 6 significant digits (inside dicts and lists too)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _six_digits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_six_digits(v) for v in value]
    return value


def _write_gzip(path: Path, text: str) -> None:
    """``text`` gzip-compressed into ``path``, byte-identical for identical text (no name, no timestamp)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(text.encode("utf-8"))


def pack(folder: Path) -> None:
    """Rewrite ``folder``'s conformance lines and bench files compact (see the module docstring)."""
    conformance = sorted(p for p in folder.glob("*.jsonl") if p.is_file())
    targets = conformance + sorted(p for p in folder.glob("*.json") if p.is_file())
    for path in targets:
        before = path.stat().st_size
        text = path.read_text(encoding="utf-8")
        if path in conformance:
            lines = [line for line in text.splitlines() if line.strip()]
            packed = path.with_name(path.name + ".gz")
            _write_gzip(packed, "".join(line + "\n" for line in pack_conformance_lines(lines)))
            path.unlink()
            print(f"{path}: {before} -> {packed.name} {packed.stat().st_size} bytes")
            continue
        try:
            text = json.dumps(json.loads(text), **COMPACT) + "\n"
        except json.JSONDecodeError:
            print(f"{path}: not JSON, left as it is")
            continue
        path.write_text(text, encoding="utf-8")
        print(f"{path}: {before} -> {path.stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit(__doc__.splitlines()[0])
    pack(Path(sys.argv[1]))
