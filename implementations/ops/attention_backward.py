"""``attention_backward(q, k, v, out, lse, dout, *, causal=None, scale=None, tiles=None, window=None,
softcap=None, bias=None, alibi_slopes=None) -> (dq, dk, dv)`` (SPEC GRAD, VAR).

The inputs of the forward plus its ``out`` and ``lse`` and the incoming gradient ``dout`` (like ``out``).
Returns ``dq, dk, dv`` shaped and typed like ``q, k, v``; with GQA, dk and dv are summed over the query heads
sharing a KV head. The variants (SPEC VAR) as in the forward; the bias gets no gradient. Uses only these
tensors (recomputation from lse, GRAD-2).

Cost: ``2.5 ×`` the forward's FLOPs: ``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``dQ = dS K``, ``dK = dSᵀ Q`` and the
recomputed ``Q Kᵀ`` are five products of ``2·Sq·Sk·D`` where the forward has two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant
from implementations.ops.attention import forward_flops, scores_shape
from implementations.ops.spec import Expected, OpSpec
from implementations.variants import Variants


@dataclass(frozen=True)
class BackwardInputs:
    """A validated backward call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    lse: torch.Tensor
    dout: torch.Tensor
    causal: CausalVariant | None
    scale: float
    tiles: tuple[int, int] | None = None
    variants: Variants = Variants()


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
          lse: torch.Tensor, dout: torch.Tensor, *, causal: bool | str | None = None, scale: float | None = None,
          tiles: tuple[int, int] | None = None, window: tuple[int, int] | None = None,
          softcap: float | None = None, bias: torch.Tensor | None = None,
          alibi_slopes: torch.Tensor | None = None) -> BackwardInputs:
    """The boundary check of the backward (validate.backward_args, validate.variant_args)."""
    variant, resolved = validate.backward_args(caps, q, k, v, out, lse, dout, causal=causal, scale=scale,
                                               tiles=tiles)
    variants = validate.variant_args(caps, scores_shape(q, k), q.device, window=window, softcap=softcap,
                                     bias=bias, alibi_slopes=alibi_slopes)
    return BackwardInputs(q, k, v, out, lse, dout, variant, resolved, tuple(tiles) if tiles is not None else None,
                          variants)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    return [Expected.like("dq", inputs["q"]), Expected.like("dk", inputs["k"]), Expected.like("dv", inputs["v"])]


def backward_flops(B: int, Hq: int, Sq: int, Sk: int, D: int, causal: bool) -> int:
    """``2.5 ×`` :func:`~implementations.ops.attention.forward_flops`."""
    return forward_flops(B, Hq, Sq, Sk, D, causal) * 5 // 2


SPEC: OpSpec[BackwardInputs] = OpSpec(
    name="attention_backward",
    signature="attention_backward(q, k, v, out, lse, dout, *, causal=None, scale=None, tiles=None, window=None, "
              "softcap=None, bias=None, alibi_slopes=None) -> (dq, dk, dv)",
    inputs=("q", "k", "v", "out", "lse", "dout"),
    outputs=("dq", "dk", "dv"),
    declared_dtypes=lambda caps: caps.backward_dtypes,
    validate=check,
    expected=expected,
)
