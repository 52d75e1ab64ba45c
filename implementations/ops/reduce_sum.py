"""``reduce_sum(x) -> (value, schedule)`` (SPEC WD-0..WD-3).

``x [n]``; ``value`` a 0-dim tensor of x's dtype; ``schedule`` the ``implementations.schedule.Schedule`` the
kernel follows bit for bit (WD-2), a ``DeferredSchedule`` where building it costs more than the sum, or None
when the order is not declared.

Cost: the fewest bytes are reading the ``n`` inputs once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities
from implementations.ops.spec import Expected, OpSpec


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


SPEC: OpSpec[ReduceInputs] = OpSpec(
    name="reduce_sum",
    signature="reduce_sum(x) -> (value, schedule)",
    inputs=("x",),
    outputs=("value", "schedule"),
    declared_dtypes=lambda caps: caps.reduce_dtypes,
    validate=check,
    expected=expected,
)
