"""Reading a bench JSON file of ``attnspec bench`` into typed timings and memory series.

``{"kind": "bench", "provenance", "ceilings", "records": [...], "memory_scaling": [...]}`` (docs/benchmarks.md).
A file that is not JSON, a record without op, backend or device, and a field of the wrong type are problems
of the file; the reader never raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reports.fields import Fields, Record, Scalar, describe, is_finite
from reports.provenance import Provenance


@dataclass(frozen=True)
class Ceilings:
    """What the bench run measured the machine can do: matmul TFLOP/s and copy GB/s, on ``device``."""

    matmul_tflops: float | None = None
    copy_gbps: float | None = None
    #: how the matmul ceiling was measured (shape and dtype)
    matmul: str | None = None
    device: str | None = None

    def applies_to(self, device: str, devices: set[str]) -> bool:
        """Whether these are the ceilings of ``device`` (the file's only device, or the one they name)."""
        return not self.device or self.device == device or len(devices) == 1


@dataclass(frozen=True)
class Timing:
    """One timed (or gated) workload of one backend."""

    op: str
    backend: str
    device: str
    dtype: str
    workload: dict[str, Scalar]
    label: str | None = None
    #: the correctness gate's verdict on this workload (passed, failed, unsupported, ...)
    gate: str | None = None
    reason: str | None = None
    median_s: float | None = None
    iqr_s: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    fraction_of_ceiling: float | None = None
    peak_extra_bytes: float | None = None
    baseline: str | None = None
    speedup: float | None = None
    flag: str | None = None

    @property
    def row(self) -> str:
        """``backend@device``."""
        return f"{self.backend}@{self.device}"


def fitted_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y against log x over positive points (None without two distinct x)."""
    pts = [(x, y) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    return float(np.polyfit(np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)[0])


@dataclass(frozen=True)
class MemorySeries:
    """Peak extra memory of one backend and op against the sequence length S."""

    backend: str
    op: str
    device: str
    #: (S, peak extra bytes), both positive and finite, by S
    points: list[tuple[float, float]]
    #: the slope the bench stored, if any
    stored_slope: float | None = None
    reason: str | None = None

    @property
    def slope(self) -> float | None:
        """The log-log slope of bytes against S: 1 is linear memory, 2 materialises the S×S scores."""
        return self.stored_slope if is_finite(self.stored_slope) else fitted_slope(self.points)


@dataclass
class Bench:
    """One bench JSON file: provenance, the machine's measured ceilings, timed records, memory scaling."""

    path: Path
    provenance: Provenance = field(default_factory=Provenance)
    ceilings: Ceilings = field(default_factory=Ceilings)
    records: list[Timing] = field(default_factory=list)
    memory_scaling: list[MemorySeries] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _identity(f: Fields, kind: str) -> tuple[str, str, str] | None:
    """op, backend and device of a record, or None (noted) when one is missing or not a string."""
    op, backend, device = f.text("op"), f.text("backend"), f.text("device")
    if op and backend and device:
        return op, backend, device
    missing = [k for k, v in (("op", op), ("backend", backend), ("device", device)) if not v]
    f.problems.append(f"{f.where}: a {kind} without {', '.join(missing)}; left out")
    return None


def parse_timing(rec: Record, where: str, problems: list[str]) -> Timing | None:
    """The timing in ``rec``, or None when it lacks op, backend or device."""
    f = Fields(rec, where)
    ident = _identity(f, "record")
    found = None if ident is None else Timing(
        *ident, dtype=f.text("dtype") or "?", workload=f.scalars("workload"), label=f.text("label"),
        gate=f.text("gate"), reason=f.text("reason"), median_s=f.number("median_s"), iqr_s=f.number("iqr_s"),
        tflops=f.number("tflops"), gbps=f.number("gbps"), fraction_of_ceiling=f.number("fraction_of_ceiling"),
        peak_extra_bytes=f.number("peak_extra_bytes"), baseline=f.text("baseline"), speedup=f.number("speedup"),
        flag=f.text("flag"),
    )
    problems += f.problems
    return found


def parse_memory(rec: Record, where: str, problems: list[str]) -> MemorySeries | None:
    """The memory series in ``rec`` (points that are not two positive finite numbers are left out)."""
    f = Fields(rec, where)
    ident = _identity(f, "memory series")
    sizes, peaks = rec.get("S"), rec.get("peak_extra_bytes")
    if not (isinstance(sizes, list) and isinstance(peaks, list)):
        f.problems.append(f"{where}: S and peak_extra_bytes are not both lists; left out")
        ident = None
    found = None
    if ident is not None:
        points = sorted((float(s), float(b)) for s, b in zip(sizes, peaks)
                        if is_finite(s) and is_finite(b) and s > 0 and b > 0)
        found = MemorySeries(ident[1], ident[0], ident[2], points, f.number("slope"), f.text("reason"))
    problems += f.problems
    return found


def load_bench(path: Path) -> Bench:
    """Read a bench JSON file; every problem is noted and whatever is readable is kept."""
    bench = Bench(Path(path))
    try:
        data = json.loads(bench.path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        bench.problems.append(f"cannot be read: {exc.strerror or exc}")
        return bench
    except json.JSONDecodeError as exc:
        bench.problems.append(f"is not valid JSON ({exc.msg} at line {exc.lineno}): no benchmark results read")
        return bench
    except RecursionError:
        bench.problems.append("is nested too deeply to read: no benchmark results read")
        return bench
    if not isinstance(data, dict):
        bench.problems.append("is not a JSON object: no benchmark results read")
        return bench
    if data.get("kind") != "bench":
        bench.problems.append(f'has kind {describe(data.get("kind"))}, expected "bench"')
    f = Fields(data, "file")
    bench.provenance = Provenance.parse(data.get("provenance"), "file", bench.problems)
    c = Fields(f.mapping("ceilings"), "ceilings")
    bench.ceilings = Ceilings(c.number("matmul_tflops"), c.number("copy_GBps"), c.text("matmul"), c.text("device"))
    bench.records = [t for i, r in enumerate(f.records("records"))
                     if (t := parse_timing(r, f"records[{i}]", bench.problems))]
    bench.memory_scaling = [m for i, r in enumerate(f.records("memory_scaling"))
                            if (m := parse_memory(r, f"memory_scaling[{i}]", bench.problems))]
    note = f.text("note")
    bench.problems += f.problems + c.problems + ([f"note: {note}"] if note else [])
    if data.get("interrupted"):
        bench.problems.append("the benchmark run was interrupted: showing the records it wrote")
    elif "finished" in data and not data["finished"]:
        bench.problems.append("the benchmark run did not finish: showing the records it wrote")
    return bench

