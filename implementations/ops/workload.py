"""What a benchmark operation defines: :class:`BenchOp`, and the workload records its table holds.

A benchmark operation times one or more calls of the contract on a table of shapes: ``attention`` calls the
forward, ``attention_fwd_bwd`` a forward then a backward. Each is defined once, in the module of the contract
operation it measures (``implementations/ops/<name>.py``), and listed in that operation's ``OpSpec``; the
benchmarks (``attnspec bench``, pytest-benchmark, asv) read them all from ``implementations.ops.BENCH_OPS``.

A definition says which contract calls it makes and what a bound call returns, the workload table per
device, how to label and describe a workload, how to draw its inputs and bind the call, its FLOP or byte
count, the float64 reference the correctness gate compares with, the baseline backend per device and the
reference rows every record is set beside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import torch

from implementations.base import AttentionCase, BackendLike, Case, RowsCase

W = TypeVar("W")

#: rows × cols of a ``[rows, cols]`` input the gate's float64 reference takes at a time (~128 MB)
GATE_CHUNK_ELEMENTS = 1 << 24


class Reference(NamedTuple):
    """The gate's float64 reference of one output: ``index`` selects the compared part of the backend's
    output (None: all of it), ``value`` is the reference of that part."""

    index: tuple[object, ...] | None
    value: torch.Tensor


@dataclass(frozen=True)
class Baseline:
    """The backend a benchmark operation's speed-ups are measured against on ``device``; ``vendor`` marks a
    vendor library (a large speed-up over one is suspicious). ``yardstick`` makes it where it is no
    registered backend but a formulation the benchmarks time as one (gated and timed like any other)."""

    device: str
    backend: str
    vendor: bool
    yardstick: Callable[[], Any] | None = None


@dataclass(frozen=True, eq=False)
class BenchOp(Generic[W]):
    """One benchmark operation (compared by identity: the callables are its definition)."""

    name: str
    #: the contract operations a bound call makes, in order
    calls: tuple[str, ...]
    #: the names of what a bound call returns, in order (the gate compares each)
    outputs: tuple[str, ...]
    #: ``(self, device, quick) -> workloads``: the table on ``"cuda"`` or ``"cpu"``; ``quick`` a small subset
    table: Callable[[BenchOp[W], str, bool], list[W]]
    #: the workload's label in records, e.g. ``B16H16-S1024-D128-causal``
    label: Callable[[W], str]
    #: the JSON ``workload`` object of a bench record
    describe: Callable[[W], dict[str, object]]
    #: ``(workload, generator, device) -> inputs``: seeded random inputs drawn on the device
    inputs: Callable[[W, torch.Generator, str], dict[str, torch.Tensor]]
    #: ``(backend, workload, inputs) -> call``: a zero-argument call returning the ``outputs``
    bind: Callable[[Any, W, dict[str, torch.Tensor]], Callable[[], tuple]]
    #: ``(workload, inputs) -> {output name: Reference}``: the gate's float64 references
    reference: Callable[[W, dict[str, torch.Tensor]], dict[str, Reference]]
    #: the baseline backend on each device
    baselines: tuple[Baseline, ...]
    #: the name of its asv benchmark class, which its history over commits is kept under
    asv_class: str
    #: the FLOPs of one call (compute-bound operations), or
    flops: Callable[[W], int] | None = None
    #: the fewest bytes one call moves (memory-bound operations)
    min_bytes: Callable[[W], int] | None = None
    #: device -> the backends every record is also set beside: the ratio of each one's median to the
    #: record's (above 1: faster than it) is the record's ``vs[name]``
    reference_rows: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: the backend method that, where a backend has it, gives the call ``bind`` times in place of the contract
    #: calls (``prepare_attention_backward``: the backward alone; docs/backend-contract.md); None: no such method
    prepared: str | None = None

    def prepares(self, backend: Any) -> bool:
        """Whether ``backend`` offers this operation's prepared call (``prepared``), which ``bind`` then times."""
        return self.prepared is not None and callable(getattr(backend, self.prepared, None))

    def workloads(self, device: str, quick: bool = False) -> list[W]:
        """The table on ``device`` (``"cuda"`` or ``"cpu"``)."""
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        return self.table(self, device, quick)

    def baseline(self, device: str) -> Baseline:
        """The baseline on ``device``."""
        return next(b for b in self.baselines if b.device == device)

    def __repr__(self) -> str:
        return f"BenchOp({self.name!r})"


class _Row:
    """What every workload derives from its benchmark operation (``bench``)."""

    bench: BenchOp
    dtype: torch.dtype

    @property
    def op(self) -> str:
        return self.bench.name

    @property
    def label(self) -> str:
        return self.bench.label(self)

    @property
    def flops(self) -> int | None:
        return self.bench.flops(self) if self.bench.flops is not None else None

    @property
    def min_bytes(self) -> int | None:
        return self.bench.min_bytes(self) if self.bench.min_bytes is not None else None

    def describe(self) -> dict[str, object]:
        return self.bench.describe(self)


@dataclass(frozen=True)
class AttentionWorkload(_Row):
    """One attention shape: ``Q, K, V [B, H, S, D]`` (Hq = Hk, Sq = Sk)."""

    bench: BenchOp
    B: int
    H: int
    S: int
    D: int
    causal: bool
    dtype: torch.dtype

    @property
    def scale(self) -> float:
        """The default softmax scale ``1/sqrt(D)`` every call uses."""
        return 1.0 / math.sqrt(self.D)

    def cases(self, backend: BackendLike, device: str) -> list[tuple[str, Case]]:
        """The contract (operation, case) pairs this workload needs; causal uses the backend's default
        variant (top-left and bottom-right coincide when Sq = Sk)."""
        variant = backend.capabilities.causal_default if self.causal else None
        case = AttentionCase(self.B, self.H, self.H, self.S, self.S, self.D, self.dtype, device, variant)
        return [(op, case) for op in self.bench.calls]


@dataclass(frozen=True)
class RowsWorkload(_Row):
    """A ``[rows, cols]`` workload: KD loss (``N × V``), softmax statistics, reduction (``rows = 1``, ``[n]``)."""

    bench: BenchOp
    rows: int
    cols: int
    dtype: torch.dtype

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def cases(self, backend: BackendLike, device: str) -> list[tuple[str, Case]]:
        return [(op, RowsCase(self.rows, self.cols, self.dtype, device)) for op in self.bench.calls]


def normal(g: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Standard normal draws from ``g`` on ``device``, drawn in float32 and cast to ``dtype``."""
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)


def row_slices(rows: int, cols: int) -> list[slice]:
    """Slices of ``rows`` holding at most GATE_CHUNK_ELEMENTS elements of ``[rows, cols]`` each."""
    step = max(1, GATE_CHUNK_ELEMENTS // cols)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]
