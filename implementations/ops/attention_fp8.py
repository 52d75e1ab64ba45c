"""``attention_fp8(q, k, v, q_descale, k_descale, v_descale, *, causal=None, scale=None) -> (out, lse)``
(SPEC FP8).

Forward attention on fp8 inputs: ``q [B, Hq, Sq, D]``, ``k, v [B, Hk, Sk, D]`` in ``torch.float8_e4m3fn``
(shapes and causal variants as ``attention``), with per-tensor descale factors (float32 0-dim tensors, > 0):
the inputs mean ``q_descale · q``, ``k_descale · k``, ``v_descale · v``. Returns ``out [B, Hq, Sq, D]``
bfloat16 and ``lse [B, Hq, Sq]`` float32 of attention on those dequantized values.

Cost: ``4·B·Hq·Sq·Sk·D`` FLOPs, as ``attention`` (halved for causal with ``Sq = Sk``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class Fp8Inputs:
    """A validated fp8 forward call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_descale: torch.Tensor
    k_descale: torch.Tensor
    v_descale: torch.Tensor
    causal: CausalVariant | None
    scale: float


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor,
          k_descale: torch.Tensor, v_descale: torch.Tensor, *, causal: bool | str | None = None,
          scale: float | None = None) -> Fp8Inputs:
    """The boundary check (validate.fp8_args)."""
    descales = {"q_descale": q_descale, "k_descale": k_descale, "v_descale": v_descale}
    variant, resolved = validate.fp8_args(caps, q, k, v, descales, causal, scale)
    return Fp8Inputs(q, k, v, q_descale, k_descale, v_descale, variant, resolved)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    q = inputs["q"]
    return [Expected("out", tuple(q.shape), torch.bfloat16, q.device),
            Expected("lse", tuple(q.shape[:3]), torch.float32, q.device)]


SPEC: OpSpec[Fp8Inputs] = OpSpec(
    name="attention_fp8",
    signature="attention_fp8(q, k, v, q_descale, k_descale, v_descale, *, causal=None, scale=None) -> (out, lse)",
    inputs=("q", "k", "v", "q_descale", "k_descale", "v_descale"),
    outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.fp8_dtypes,
    validate=check,
    expected=expected,
)
