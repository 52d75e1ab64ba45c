"""A bench JSON file of ``attnspec bench`` as the report reads it: its run (provenance, ceilings, timed records,
memory series), decoded by ``conformance.codec``, and the problems found reading it.

``{"kind": "bench", "schema", "provenance", "ceilings", "records": [...], "memory_scaling": [...]}``
(docs/benchmarks.md). A file that is not JSON, a record without op, backend or device, and a field of the wrong
type are problems of the file; the reader never raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conformance.codec import read_bench
from conformance.records import BenchRecord, BenchRun, Ceilings, MemoryRecord, Provenance


@dataclass
class Bench:
    """One bench JSON file: its run and the problems found reading it."""

    path: Path
    run: BenchRun = field(default_factory=BenchRun)
    problems: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> Provenance:
        return self.run.provenance

    @property
    def ceilings(self) -> Ceilings:
        return self.run.ceilings

    @property
    def records(self) -> list[BenchRecord]:
        return self.run.records

    @property
    def memory_scaling(self) -> list[MemoryRecord]:
        return self.run.memory_scaling


def load_bench(path: Path) -> Bench:
    """Read a bench JSON file; every problem is noted and whatever is readable is kept."""
    bench = Bench(Path(path))
    bench.run = read_bench(bench.path, bench.problems)
    return bench
