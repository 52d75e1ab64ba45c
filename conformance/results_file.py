"""Writing a conformance results file as the run goes: JSON lines through :mod:`conformance.codec`, each
flushed and synced, so a crash loses at most the case in flight (docs/results-format.md)."""

from __future__ import annotations

import os
from pathlib import Path

from conformance.codec import dumps
from conformance.records import ConformanceRecord


class ResultsWriter:
    """Appends conformance records as JSON lines, each flushed and synced, so a crash loses at most the case in
    flight. With no path it writes nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: ConformanceRecord) -> None:
        if self._fh is None:
            return
        self._fh.write(dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def append_line(path: Path, record: ConformanceRecord) -> None:
    """Append one record on a line of its own to a file another process may have cut mid-line (that line is
    left as it is)."""
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        cut = False
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
        fh.write((b"\n" if cut else b"") + dumps(record).encode() + b"\n")
