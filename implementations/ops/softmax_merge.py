"""``softmax_merge(m1, l1, m2, l2) -> (m, l)`` (SPEC SMX-2).

``m = max(m1, m2)``, ``l = l1·exp(m1 - m) + l2·exp(m2 - m)`` elementwise over tensors of one shape; the
identity is ``(-inf, 0)`` and ``(-inf, 0) ⊕ (-inf, 0) = (-inf, 0)`` without NaN.

Oracle: the formula in float64 on the CPU; naive: the formula in dtype ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class MergeInputs:
    """A validated merge call."""

    m1: torch.Tensor
    l1: torch.Tensor
    m2: torch.Tensor
    l2: torch.Tensor


def check(caps: Capabilities, m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor,
          l2: torch.Tensor) -> MergeInputs:
    """The boundary check (validate.merge_args)."""
    validate.merge_args(caps, m1, l1, m2, l2)
    return MergeInputs(m1, l1, m2, l2)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    return [Expected.like("m", inputs["m1"]), Expected.like("l", inputs["l1"])]


def naive(m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor, l2: torch.Tensor,
          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula in ``dtype`` on the inputs' device."""
    m1, l1, m2, l2 = (x.to(dtype) for x in (m1, l1, m2, l2))
    m = torch.maximum(m1, m2)
    return m, l1 * torch.exp(m1 - m) + l2 * torch.exp(m2 - m)


def oracle(m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor,
           l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula in float64, on the CPU."""
    m, l = naive(m1, l1, m2, l2, torch.float64)
    return m.cpu(), l.cpu()


SPEC: OpSpec[MergeInputs] = OpSpec(
    name="softmax_merge", signature="softmax_merge(m1, l1, m2, l2) -> (m, l)", inputs=("m1", "l1", "m2", "l2"),
    outputs=("m", "l"), declared_dtypes=lambda caps: caps.stats_dtypes, validate=check, expected=expected,
    oracle=oracle, naive=naive, multipliers={"m": 2.0, "l": 2.0},
)
