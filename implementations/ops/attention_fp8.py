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
from implementations.ops.attention import materialised
from implementations.ops.attention import oracle as dense_oracle
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


# ------------------------------------------------------------------------------------------------
# Oracle (SPEC FP8-1): attention on the dequantized inputs; naive as fp8 kernels compute


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor, k_descale: torch.Tensor,
           v_descale: torch.Tensor, *, causal: CausalVariant | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle: attention on ``descale · float(x)``."""
    deq = (x.double() * float(d) for x, d in ((q, q_descale), (k, k_descale), (v, v_descale)))
    return dense_oracle(*deq, causal=causal, scale=scale)


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor, k_descale: torch.Tensor,
          v_descale: torch.Tensor, *, causal: CausalVariant | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q Kᵀ`` of the dequantized values and the softmax in float32, P rounded to q's fp8 dtype before ``P V``
    (the tensor cores' input) with V's descale applied after, ``P V`` in float32, out rounded to bfloat16."""
    qd, kd = q.float() * q_descale, k.float() * k_descale
    with torch.no_grad():
        out, lse = materialised(qd, kd, v.float(), causal=causal, scale=scale, compute=torch.float32,
                                p_round=q.dtype)
    return (out * v_descale).to(torch.bfloat16), lse


SPEC: OpSpec[Fp8Inputs] = OpSpec(
    name="attention_fp8",
    signature="attention_fp8(q, k, v, q_descale, k_descale, v_descale, *, causal=None, scale=None) -> (out, lse)",
    inputs=("q", "k", "v", "q_descale", "k_descale", "v_descale"), outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.fp8_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"out": 2.0, "lse": 2.0},
)
