"""``attention_delta(out, dout) -> delta`` (SPEC GRAD-3), optional.

``delta [B, Hq, Sq] = rowsum(dout ∘ out)``, float32 (float64 for float64 inputs), the term every row of the
backward's ``dS`` subtracts; it equals ``rowsum(P ∘ dP)``.

Oracle: the rowsum in float64 on the CPU; naive: the rowsum in dtype ``t``.
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


def oracle(out: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """``rowsum(dout ∘ out)`` in float64, on the CPU."""
    return (dout.double().cpu() * out.double().cpu()).sum(-1)


def naive(out: torch.Tensor, dout: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``rowsum(dout ∘ out)`` in ``dtype`` on the inputs' device."""
    return (dout.to(dtype) * out.to(dtype)).sum(-1)


SPEC: OpSpec[DeltaInputs] = OpSpec(
    name="attention_delta", signature="attention_delta(out, dout) -> delta", inputs=("out", "dout"), outputs=("delta",),
    declared_dtypes=lambda caps: caps.backward_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"delta": 2.0}, bare=True,
)
