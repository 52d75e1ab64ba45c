"""The provenance section of the page: the machine, software and commit each result file was measured with
(``conformance.records.Provenance``, read by ``conformance.codec``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reports.load import ResultSet


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
