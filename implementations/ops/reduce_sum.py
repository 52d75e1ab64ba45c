"""``reduce_sum(x) -> (value, schedule)`` (SPEC WD-0..WD-3).

``x [n]``; ``value`` a 0-dim tensor of x's dtype; ``schedule`` the ``implementations.schedule.Schedule`` the
kernel follows bit for bit (WD-2), a ``DeferredSchedule`` where building it costs more than the sum, or None
when the order is not declared.

Cost: the fewest bytes are reading the ``n`` inputs once.

Oracle: the float64 sum; naive: the sum in dtype ``t`` (torch's order). Benchmark: ``x`` uniform in [0, 1),
so the sum is well conditioned and any summation order meets the gate, against ``torch.sum``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from implementations import validate
from implementations.base import Backend, Capabilities
from implementations.ops.spec import Expected, OpSpec
from implementations.ops.workload import Baseline, BenchOp, Reference, RowsWorkload, row_slices


@dataclass(frozen=True)
class ReduceInputs:
    """A validated reduction (or scan) call."""

    x: torch.Tensor


def check(caps: Capabilities, x: torch.Tensor) -> ReduceInputs:
    """The boundary check (validate.rows_arg)."""
    return ReduceInputs(validate.rows_arg(caps, "reduce_sum", x))


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    x = inputs["x"]
    return [Expected("value", (), x.dtype, x.device)]


def min_bytes(n: int, itemsize: int) -> int:
    """Read the ``n`` inputs once."""
    return n * itemsize


def oracle(x: torch.Tensor) -> torch.Tensor:
    """The sum in float64, on the CPU."""
    return x.double().sum().cpu()


def naive(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The sum in ``dtype`` on the inputs' device, in torch's order."""
    return x.to(dtype).sum()


# ------------------------------------------------------------------------------------------------
# Benchmark

#: (device, quick) -> the lengths n of the table (float32)
TABLE: dict[tuple[str, bool], list[int]] = {
    ("cuda", False): [1 << p for p in (24, 26, 28)],
    ("cuda", True): [1 << 26],
    ("cpu", False): [1 << p for p in (18, 20)],
    ("cpu", True): [1 << 16],
}


def _label(w: RowsWorkload) -> str:
    """``n2^28`` for a power of two, ``n1000`` otherwise."""
    n = w.cols
    return f"n2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"n{n}"


def _inputs(w: RowsWorkload, g: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    return {"x": torch.rand((w.cols,), generator=g, device=device, dtype=torch.float32).to(w.dtype)}


def _reference(w: RowsWorkload, inputs: dict[str, torch.Tensor]) -> dict[str, Reference]:
    """The float64 sum, a chunk of inputs at a time."""
    x = inputs["x"]
    total = sum(float(x[c].to("cpu", torch.float64).sum()) for c in row_slices(x.numel(), 1))
    return {"value": Reference(None, torch.tensor(total, dtype=torch.float64))}


def _bind(backend: Any, w: RowsWorkload, inputs: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    x = inputs["x"]
    return lambda: (backend.reduce_sum(x)[0],)  # the schedule is not an output


BENCH: BenchOp[RowsWorkload] = BenchOp(
    name="reduce_sum", asv_class="ReduceSum", calls=("reduce_sum",), outputs=("value",),
    table=lambda bench, device, quick: [RowsWorkload(bench, 1, n, torch.float32) for n in TABLE[(device, quick)]],
    label=_label, describe=lambda w: {"n": w.cols, "min_bytes": w.min_bytes},
    inputs=_inputs, bind=_bind, reference=_reference,
    baselines=tuple(Baseline(device, "torch.sum", vendor=True, yardstick=lambda: TorchSum())
                    for device in ("cuda", "cpu")),
    min_bytes=lambda w: min_bytes(w.cols, w.itemsize))


SPEC: OpSpec[ReduceInputs] = OpSpec(
    name="reduce_sum", signature="reduce_sum(x) -> (value, schedule)", inputs=("x",), outputs=("value", "schedule"),
    declared_dtypes=lambda caps: caps.reduce_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"sum": 2.0}, benchmarks=(BENCH,),
)


class TorchSum(Backend):
    """The baseline: ``torch.sum`` in float32; its order of additions is not declared."""

    name = "torch.sum"
    description = "baseline: torch.sum"
    capabilities = Capabilities(devices=("cpu", "cuda"), dtypes=(), reduce_dtypes=(torch.float32,))

    @SPEC.implementation
    def reduce_sum(self, inp: ReduceInputs) -> tuple[torch.Tensor, None]:
        return torch.sum(inp.x), None
