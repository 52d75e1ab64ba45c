"""``prefix_sum(x) -> (y, schedule)`` (SPEC WD-5), optional.

``x [n]``; ``y`` the inclusive prefix sums, like x; ``schedule`` the ``implementations.schedule.ScanSchedule``
(kind ``hillis-steele``, ``blelloch`` or ``sequential``) the kernel follows bit for bit.

Oracle: the float64 cumulative sum; naive: the cumulative sum in dtype ``t``.
"""

from __future__ import annotations

import torch

from implementations import validate
from implementations.base import Capabilities
from implementations.ops.reduce_sum import ReduceInputs
from implementations.ops.spec import Expected, OpSpec


def check(caps: Capabilities, x: torch.Tensor) -> ReduceInputs:
    """The boundary check (validate.rows_arg)."""
    return ReduceInputs(validate.rows_arg(caps, "prefix_sum", x))


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    return [Expected.like("y", inputs["x"])]


def oracle(x: torch.Tensor) -> torch.Tensor:
    """The inclusive prefix sums in float64, on the CPU."""
    return x.double().cpu().cumsum(0)


def naive(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inclusive prefix sums in ``dtype`` on the inputs' device."""
    return x.to(dtype).cumsum(0)


SPEC: OpSpec[ReduceInputs] = OpSpec(
    name="prefix_sum", signature="prefix_sum(x) -> (y, schedule)", inputs=("x",), outputs=("y", "schedule"),
    declared_dtypes=lambda caps: caps.reduce_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"scan": 2.0},
)
