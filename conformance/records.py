"""The conformance results file: JSON lines appended and flushed one by one as the run goes
(docs/results-format.md).

JSON has no infinities or NaN: they are written as the strings ``"inf"``, ``"-inf"``, ``"nan"``
(:func:`json_safe`), which every reader of the format accepts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from implementations.base import dtype_name


class ResultsWriter:
    """Appends JSON lines, flushed one by one, so a crash loses at most the case in flight."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, default=_json_default, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _json_default(x: object) -> object:
    if isinstance(x, torch.dtype):
        return dtype_name(x)
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def json_safe(x: Any) -> Any:
    """JSON has no inf/nan: encode them as strings."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def done_ids(path: Path) -> set[str]:
    """Ids that already have a final record in a results file (for ``--resume``)."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("kind") == "case":
            ids.add(rec["id"])
    return ids
