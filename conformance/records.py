"""The typed records of the result files (docs/results-format.md): what the conformance JSON lines and the bench
JSON hold, one dataclass per kind of record.

Writers build these records and readers get them back; ``conformance.codec`` is the only place that turns them
into JSON and back. Field names are the JSON keys (a field whose key differs names it in ``metadata["json"]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from conformance.fields import Scalar
from conformance.results import Status

#: a JSON object held as it is (a backend's declared capabilities, a case's clause-specific figures)
Mapping = dict[str, Any]


class Ended(str, Enum):
    """How a pytest child's run ended (the ``end`` record)."""

    COMPLETED = "completed"  # every selected case ran
    INTERRUPTED = "interrupted"  # a real SIGINT or SIGTERM
    ABORTED = "aborted"  # pytest stopped otherwise (internal or usage error)


@dataclass(frozen=True)
class Provenance:
    """Where and with what a result file was made (``conformance.provenance.collect``); every field may be
    unknown (None)."""

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
    #: ISO-8601 start of the run (for a conformance file of several runs, the reader keeps the earliest)
    timestamp: str | None = None

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


@dataclass(frozen=True)
class BackendListing:
    """A backend as a run lists it: found or not, why not, what it says it is and what it declares."""

    name: str
    origin: str | None = None
    available: bool | None = None
    reason: str | None = None
    #: the backend's one-line ``description``
    description: str | None = None
    #: ``Capabilities.describe()`` of the backend (None when it could not be made)
    capabilities: Mapping | None = None

    @property
    def reduce_schedule(self) -> str | None:
        """The combine schedule its reduction declares (``capabilities.reduce_schedule``)."""
        value = (self.capabilities or {}).get("reduce_schedule")
        return value if isinstance(value, str) else None


# -- conformance JSON lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """The first line of a pytest child's run (``kind`` ``run``, or ``resume`` for a child restarted after a
    crash, which skips the cases already recorded)."""

    run_id: str
    started: str | None = None
    pid: int | None = None
    provenance: Provenance = field(default_factory=Provenance)
    argv: list[str] = field(default_factory=list)
    quick: bool | None = None
    #: the part of the matrix this run holds, ``K/N`` (None: all of it)
    shard: str | None = None
    every_case: bool | None = None
    backends: list[BackendListing] = field(default_factory=list)
    resumed: bool = False


@dataclass(frozen=True)
class CaseStart:
    """Written before a case runs, so a case whose process died or hung can be named and rerun."""

    id: str
    clause: str
    backend: str
    device: str
    dtype: str | None = None
    op: str | None = None
    shape: str | None = None
    seed: int | None = None
    #: a one-line shell command that runs this case alone
    repro: str | None = None

    @property
    def area(self) -> str:
        """The clause's area: ATT, GRAD, SMX, KD, WD."""
        return self.clause.split("-", 1)[0]


@dataclass(frozen=True)
class CaseRecord:
    """One case's result: a test of one clause on one backend and device, with its verdict and scores."""

    id: str
    clause: str
    backend: str
    device: str
    status: Status
    dtype: str | None = None
    op: str | None = None
    shape: str | None = None
    seed: int | None = None
    #: the test function's name
    test: str | None = None
    err: float | None = None
    ref_err: float | None = None
    ratio: float | None = None
    mult: float | None = None
    bound: float | None = None
    #: the output whose error is ``err`` (out, lse, dq, ...)
    worst: str | None = None
    reason: str | None = None
    duration: float | None = None
    #: clause-specific figures (memory peaks and slope for ATT-10, W and D for WD, ...)
    metrics: Mapping = field(default_factory=dict)
    #: a one-line shell command that reruns this case (on every bad case)
    repro: str | None = None

    @property
    def row(self) -> str:
        """The matrix row of the case: ``backend@device``."""
        return f"{self.backend}@{self.device}"

    @property
    def area(self) -> str:
        """The clause's area: ATT, GRAD, SMX, KD, WD."""
        return self.clause.split("-", 1)[0]

    @classmethod
    def ended(cls, start: CaseStart, status: Status, reason: str, duration: float | None) -> CaseRecord:
        """The result of a started case that never wrote one (crashed, timed out or interrupted)."""
        return cls(id=start.id, clause=start.clause, backend=start.backend, device=start.device, status=status,
                   dtype=start.dtype, op=start.op, shape=start.shape, seed=start.seed, reason=reason,
                   duration=duration, repro=start.repro)


@dataclass(frozen=True)
class EndRecord:
    """The last line of a pytest child's run: how it ended and its cases per status."""

    run_id: str
    finished: str | None = None
    ended: Ended | None = None
    #: the signal that stopped the run: ``SIGINT``, ``SIGTERM`` or None
    stopped_by: str | None = None
    exitstatus: int | None = None
    counts: dict[Status, int] = field(default_factory=dict)


ConformanceRecord = RunRecord | CaseStart | CaseRecord | EndRecord


# -- bench JSON -------------------------------------------------------------------------------------------


class TimedCall(str, Enum):
    """Which call of a backend a bench record timed, where its benchmark operation offers two
    (``BenchOp.prepared``): the contract calls, or the backend's prepared call, which recomputes no forward."""

    #: the contract calls as the backend implements them (a backend that recomputes the forward through
    #: autograd inside ``attention_backward`` and offers no prepared call is timed with that forward)
    CONTRACT = "contract"
    #: the backend's prepared call: ``prepare_attention_backward``'s (the gradients alone, from a forward run
    #: once, untimed, before the timing) or ``prepare_attention_forward_backward``'s (one forward, then its
    #: backward)
    PREPARED = "prepared"


@dataclass(frozen=True)
class Ceilings:
    """What the bench run measured the machine can do: matmul TFLOP/s and copy GB/s, on ``device``."""

    matmul_tflops: float | None = None
    copy_gbps: float | None = field(default=None, metadata={"json": "copy_GBps"})
    #: how the matmul ceiling was measured (shape and dtype)
    matmul: str | None = None
    #: how the copy ceiling was measured
    copy: str | None = None
    #: the GPU or CPU they were measured on
    device: str | None = None
    #: seconds the measurement took
    seconds: float | None = None

    def applies_to(self, device: str, devices: set[str]) -> bool:
        """Whether these are the ceilings of ``device`` (the file's only device, or the one they name)."""
        return not self.device or self.device == device or len(devices) == 1


@dataclass
class BenchRecord:
    """One workload of one backend: the correctness gate's verdict, then (when it passed) its timing, rates,
    fraction of the ceiling, peak extra memory and speed-up over the operation's baseline."""

    op: str
    backend: str
    device: str
    dtype: str
    workload: dict[str, Scalar] = field(default_factory=dict)
    label: str | None = None
    seed: int | None = None
    #: the gate's verdict: passed, failed, error or unsupported (None: not gated)
    gate: Status | None = None
    reason: str | None = None
    #: relative error of each output against the gate's reference
    errors: dict[str, float] = field(default_factory=dict)
    median_s: float | None = None
    iqr_s: float | None = None
    reps: int | None = None
    #: how it was timed (cuda-events, cuda-graph, perf_counter)
    timing: str | None = None
    #: which call was timed where the operation offers two (TimedCall); None where it offers one, or untimed
    timed: TimedCall | None = None
    tflops: float | None = None
    gbps: float | None = None
    fraction_of_ceiling: float | None = None
    peak_extra_bytes: float | None = None
    peak_probe: str | None = None
    baseline: str | None = None
    speedup: float | None = None
    #: each reference row's median over this one's (BenchOp.reference_rows; above 1: faster)
    vs: dict[str, float] = field(default_factory=dict)
    flag: str | None = None

    @property
    def row(self) -> str:
        """``backend@device``."""
        return f"{self.backend}@{self.device}"


@dataclass(frozen=True)
class MemoryRecord:
    """Peak extra memory of one backend and operation against the sequence length S."""

    backend: str
    op: str
    device: str
    dtype: str | None = None
    workload: dict[str, Scalar] = field(default_factory=dict)
    #: the sequence lengths, None where the file holds something else
    S: list[float | None] = field(default_factory=list)
    #: bytes at each S, None where it was not measured
    peak_extra_bytes: list[float | None] = field(default_factory=list)
    #: the log-log slope the bench fitted, if any
    slope: float | None = None
    reason: str | None = None

    @property
    def points(self) -> list[tuple[float, float]]:
        """(S, peak extra bytes) where both are positive and finite, by S."""
        return sorted((s, b) for s, b in zip(self.S, self.peak_extra_bytes)
                      if s is not None and b is not None and math.isfinite(s) and math.isfinite(b) and s > 0 and b > 0)

    @property
    def scaling(self) -> float | None:
        """The log-log slope of bytes against S: the stored one, else a least-squares fit over the points (1 is
        linear memory, 2 materialises the S×S scores)."""
        if self.slope is not None and math.isfinite(self.slope):
            return self.slope
        return fitted_slope(self.points)


def fitted_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y against log x over positive points (None without two distinct x)."""
    pts = [(x, y) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    return float(np.polyfit(np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)[0])


@dataclass(frozen=True)
class BenchPart:
    """One process of a bench run spread over several (``attnspec bench --gpus/--jobs``): its options and the
    ceilings it measured on its device."""

    argv: list[str] = field(default_factory=list)
    ceilings: Ceilings = field(default_factory=Ceilings)


@dataclass
class BenchRun:
    """One bench JSON file: the machine, its measured ceilings, the backends, the records and memory series."""

    device: str | None = None
    provenance: Provenance = field(default_factory=Provenance)
    argv: list[str] = field(default_factory=list)
    quick: bool | None = None
    ceilings: Ceilings = field(default_factory=Ceilings)
    backends: list[BackendListing] = field(default_factory=list)
    records: list[BenchRecord] = field(default_factory=list)
    memory_scaling: list[MemoryRecord] = field(default_factory=list)
    interrupted: bool = False
    #: ISO-8601 end of the run; None while it runs or when it was cut short
    finished: str | None = None
    #: a note the file's author added by hand
    note: str | None = None
    #: the processes of a spread run, in the order of their records (empty for a run in one process)
    parts: list[BenchPart] = field(default_factory=list)
