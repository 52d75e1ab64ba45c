"""Provenance: the machine, software and commit a result file was measured with, and its section of the page.

Format: docs/results-format.md (``conformance.provenance.collect()``). Every field is a string or null; a
provenance that is not an object, or a field of another type, is a problem of its file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from reports.fields import Fields, describe, parse_time

if TYPE_CHECKING:
    from reports.load import ResultSet


@dataclass(frozen=True)
class Provenance:
    """Where and with what a result file was made; every field may be unknown (None)."""

    hostname: str | None = None
    platform: str | None = None
    python: str | None = None
    cpu: str | None = None
    gpu: str | None = None
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    triton: str | None = None
    cupy: str | None = None
    numpy: str | None = None
    commit: str | None = None
    dirty: bool | None = None
    #: ISO-8601 start of the run (for a conformance file of several runs, the earliest)
    timestamp: str | None = None

    @classmethod
    def parse(cls, value: object, where: str, problems: list[str]) -> Provenance:
        """The provenance in ``value``; a value that is not an object, or a wrong field, is noted in ``problems``."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            problems.append(f"{where}: provenance is {describe(value)}, not an object; left out")
            return cls()
        reader = Fields(value, f"{where}: provenance")
        found = {f.name: reader.flag(f.name) if f.name == "dirty" else reader.text(f.name) for f in fields(cls)}
        problems += reader.problems
        if found["timestamp"] is not None and parse_time(found["timestamp"]) is None:
            problems.append(f"{where}: provenance timestamp {describe(found['timestamp'])} is not an ISO-8601 time")
        return cls(**found)

    @property
    def label(self) -> str:
        """A short name for the machine: its GPU (or CPU) and host name."""
        device = self.gpu or self.cpu or self.platform or "unknown machine"
        return f"{device} ({self.hostname})" if self.hostname else device

    @property
    def machine(self) -> tuple[str, str | None] | None:
        """What identifies the machine: host name and GPU (None without a host name)."""
        return (self.hostname, self.gpu) if self.hostname else None

    @property
    def short_commit(self) -> str:
        """The commit shortened to 12 characters, marked when the tree was dirty."""
        if not self.commit:
            return "—"
        return f"{self.commit[:12]}{' (dirty)' if self.dirty else ''}"


#: the rows of the provenance table: (label, field of Provenance)
ROWS = (
    ("machine", "hostname"), ("platform", "platform"), ("CPU", "cpu"), ("GPU", "gpu"), ("driver", "driver"),
    ("CUDA", "cuda"), ("Python", "python"), ("torch", "torch"), ("Triton", "triton"), ("CuPy", "cupy"),
    ("NumPy", "numpy"), ("commit", "commit"), ("date", "timestamp"),
)


@dataclass(frozen=True)
class Column:
    """One result file's column of the provenance table."""

    set: str
    kind: str
    file: str
    values: dict[str, str]


def columns(sets: Iterable[ResultSet]) -> list[Column]:
    """One column per result file: its set's label, kind, file name and provenance rows."""
    out = []
    for rs in sets:
        for src in rs.sources:
            prov = src.provenance
            values = {label: prov.short_commit if key == "commit" else (getattr(prov, key) or "—")
                      for label, key in ROWS}
            if src is rs.conformance and rs.conformance.date_note:
                values["date"] += f" ({rs.conformance.date_note})"
            out.append(Column(rs.label, "conformance" if src is rs.conformance else "bench", src.path.name, values))
    return out
