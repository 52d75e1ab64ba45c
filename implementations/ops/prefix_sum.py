"""``prefix_sum(x) -> (y, schedule)`` (SPEC WD-5), optional.

``x [n]``; ``y`` the inclusive prefix sums, like x; ``schedule`` the ``implementations.schedule.ScanSchedule``
(kind ``hillis-steele``, ``blelloch`` or ``sequential``) the kernel follows bit for bit.
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


SPEC: OpSpec[ReduceInputs] = OpSpec(
    name="prefix_sum",
    signature="prefix_sum(x) -> (y, schedule)",
    inputs=("x",),
    outputs=("y", "schedule"),
    declared_dtypes=lambda caps: caps.reduce_dtypes,
    validate=check,
    expected=expected,
)
