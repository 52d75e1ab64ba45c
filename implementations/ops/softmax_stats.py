"""``softmax_stats(x, *, block=None) -> (m, l)`` (SPEC SMX-1).

``x [N, L]``; ``m [N]`` the row max (exactly), ``l [N] = Σ exp(x - m)``, float32 (float64 for float64
input), computed over blocks of ``block`` elements (None: the backend's own). A row of -inf gives (-inf, 0).

Cost: the fewest bytes are reading ``x`` once and writing ``m`` and ``l``: ``N·L·itemsize + 8·N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, wide_dtype
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class StatsInputs:
    """A validated statistics call."""

    x: torch.Tensor
    block: int | None = None


def check(caps: Capabilities, x: torch.Tensor, *, block: int | None = None) -> StatsInputs:
    """The boundary check (validate.rows_arg)."""
    return StatsInputs(validate.rows_arg(caps, "softmax_stats", x), block)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    x = inputs["x"]
    return [Expected(name, tuple(x.shape[:-1]), wide_dtype(x.dtype), x.device) for name in ("m", "l")]


def min_bytes(rows: int, cols: int, itemsize: int) -> int:
    """Read ``x [rows, cols]`` once and write ``m`` and ``l`` (float32, 4 bytes each per row)."""
    return rows * cols * itemsize + 2 * 4 * rows


SPEC: OpSpec[StatsInputs] = OpSpec(
    name="softmax_stats",
    signature="softmax_stats(x, *, block=None) -> (m, l)",
    inputs=("x",),
    outputs=("m", "l"),
    declared_dtypes=lambda caps: caps.stats_dtypes,
    validate=check,
    expected=expected,
)
