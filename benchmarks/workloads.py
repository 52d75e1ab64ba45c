"""The workload table: every shape the benchmarks time, its FLOP or byte count, and how to call it.

``attnspec bench``, pytest-benchmark (``benchmarks/test_bench_pytest.py``) and asv
(``benchmarks/asv_suite.py``) all read this module, which reads the benchmark operations each operation's
module defines (``implementations.ops.BENCH_OPS``: the table per device, the inputs, the bound call, the
FLOP or byte count of SPEC.md "FLOP and byte counts used by benchmarks"). Here: the seeding of the inputs,
the rates, the declared reasons a backend skips a workload, and the memory-scaling sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from conformance.records import TimedCall
from implementations.base import BackendLike
from implementations.ops import BENCH_OPS, AttentionWorkload, RowsWorkload

#: the benchmark operations, in the order the benchmarks run them
OPS: tuple[str, ...] = tuple(BENCH_OPS)

#: memory-scaling sweeps (peak extra memory against S, B = 1)
MEMORY_SEQ_LENS = {"cuda": (1024, 2048, 4096, 8192, 16384, 32768), "cpu": (128, 256, 512, 1024)}
MEMORY_HEADS = {"cuda": 16, "cpu": 2}
MEMORY_HEAD_DIM = {"cuda": 128, "cpu": 64}

Workload = AttentionWorkload | RowsWorkload


def workloads(op: str, device: str, quick: bool = False) -> list[Workload]:
    """The table of ``op`` for ``device`` (``"cuda"`` or ``"cpu"``); ``quick`` keeps a small subset."""
    if op not in BENCH_OPS:
        raise ValueError(f"unknown benchmark operation {op!r} (known: {', '.join(OPS)})")
    return BENCH_OPS[op].workloads(device, quick)


@dataclass(frozen=True)
class LabelPattern:
    """One ``-k`` of ``attnspec bench``: the workloads whose label contains ``text``, ignoring case, or, when
    ``negated`` (``-k "not TEXT"``), those whose label does not."""

    text: str
    negated: bool = False

    @classmethod
    def parse(cls, expr: str) -> LabelPattern:
        """``TEXT`` or ``not TEXT`` (surrounding spaces dropped); ValueError for an empty text."""
        words = expr.split(maxsplit=1)
        negated = bool(words) and words[0] == "not"
        text = (words[1].strip() if len(words) == 2 else "") if negated else expr.strip()
        if not text:
            raise ValueError(f"-k {expr!r}: no text to look for in the labels")
        return cls(text, negated)

    def keeps(self, label: str) -> bool:
        """Whether ``label`` passes this pattern."""
        return (self.text.lower() in label.lower()) != self.negated


def matching(found: Iterable[Workload], patterns: Iterable[LabelPattern]) -> list[Workload]:
    """The workloads of ``found`` whose label passes every pattern (all of them when there is none)."""
    patterns = list(patterns)
    return [w for w in found if all(p.keeps(w.label) for p in patterns)]


def unmatched(patterns: list[LabelPattern], ops: list[str], device: str, quick: bool) -> str:
    """Why ``-k`` ``patterns`` that keep no workload of ``ops`` on ``device`` are refused, with a few of the
    labels there are."""
    labels = list(dict.fromkeys(w.label for op in ops for w in workloads(op, device, quick)))
    asked = " ".join(f"-k {'not ' if p.negated else ''}{p.text!r}" for p in patterns)
    return (f"{asked} keeps no workload of {', '.join(ops)} on {device}; its labels are e.g. "
            + ", ".join(labels[:6]) + (f" ({len(labels)} in all)" if len(labels) > 6 else ""))


def memory_workloads(op: str, device: str) -> list[AttentionWorkload]:
    """The memory-scaling sweep of ``op`` (``attention`` or ``attention_backward``): B = 1, non-causal,
    S over ``MEMORY_SEQ_LENS[device]``."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return [AttentionWorkload(BENCH_OPS[op], 1, MEMORY_HEADS[device], S, MEMORY_HEAD_DIM[device], False, dtype)
            for S in MEMORY_SEQ_LENS[device]]


def rates(workload: Workload, seconds: float) -> tuple[float | None, float | None]:
    """``(TFLOP/s, GB/s)`` of one call taking ``seconds``; the one that does not apply is None."""
    flops, nbytes = workload.flops, workload.min_bytes
    return (flops / seconds / 1e12 if flops is not None else None,
            nbytes / seconds / 1e9 if nbytes is not None else None)


def not_supported(backend: BackendLike, workload: Workload, device: str) -> list[str]:
    """The backend's declared reasons (``not_supported_reasons``) against every contract call it needs."""
    reasons: list[str] = []
    for op, case in workload.cases(backend, device):
        reasons += [r for r in backend.not_supported_reasons(op, case) if r not in reasons]
    return reasons


def make_inputs(workload: Workload, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Fresh seeded random inputs of ``workload`` (its operation's ``inputs``), drawn on ``device`` itself
    (GPU workloads reach ``8192 × 131072`` elements, too large to draw on the CPU and copy over on every
    record)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return workload.bench.inputs(workload, g, device)


def timed_call(backend: BackendLike, workload: Workload) -> TimedCall | None:
    """Which call :func:`bind` gives ``backend`` to time on ``workload`` where its operation offers a prepared
    call (``BenchOp.prepared``): the prepared one, when the backend has it, or the contract's; None where the
    operation offers none."""
    if workload.bench.prepared is None:
        return None
    return TimedCall.PREPARED if workload.bench.prepares(backend) else TimedCall.CONTRACT


def bind(backend: BackendLike, workload: Workload, inputs: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    """A zero-argument call of ``backend`` on ``inputs`` returning the outputs its operation names
    (``BenchOp.outputs``): the contract calls, or the backend's prepared call (:func:`timed_call`); work the
    call needs first (the forward a backward reads) runs here, untimed."""
    return workload.bench.bind(backend, workload, inputs)
