"""``attention_delta(out, dout) -> delta`` (SPEC GRAD-3), optional.

``delta [B, Hq, Sq] = rowsum(dout ∘ out)``, float32 (float64 for float64 inputs), the term every row of the
backward's ``dS`` subtracts; it equals ``rowsum(P ∘ dP)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, wide_dtype
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class DeltaInputs:
    """A validated delta call."""

    out: torch.Tensor
    dout: torch.Tensor


def check(caps: Capabilities, out: torch.Tensor, dout: torch.Tensor) -> DeltaInputs:
    """The boundary check (validate.delta_args)."""
    validate.delta_args(caps, out, dout)
    return DeltaInputs(out, dout)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    out = inputs["out"]
    return [Expected("delta", tuple(out.shape[:3]), wide_dtype(out.dtype), out.device)]


SPEC: OpSpec[DeltaInputs] = OpSpec(
    name="attention_delta",
    signature="attention_delta(out, dout) -> delta",
    inputs=("out", "dout"),
    outputs=("delta",),
    declared_dtypes=lambda caps: caps.backward_dtypes,
    validate=check,
    expected=expected,
    bare=True,
)
