"""``attention(q, k, v, *, causal=None, scale=None, tiles=None, window=None, softcap=None, bias=None,
alibi_slopes=None) -> (out, lse)`` (SPEC ATT, VAR).

``q [B, Hq, Sq, D]``, ``k, v [B, Hk, Sk, D]`` with ``Hq % Hk == 0`` (query head h reads KV head
``h // (Hq // Hk)``); ``causal`` None, True (the backend's ``causal_default``), ``"top_left"`` or
``"bottom_right"``; ``scale`` defaults to ``1/sqrt(D)``; ``tiles = (block_m, block_n)`` only where the
backend declares tile sizes; ``window``, ``softcap``, ``bias``, ``alibi_slopes`` the variants of SPEC VAR
(``implementations.variants``), each only where the backend declares it in ``attention_variants``. Returns
``out`` like q and ``lse [B, Hq, Sq]`` in natural log, float32 (float64 for float64 inputs).

Cost: ``4·B·Hq·Sq·Sk·D`` FLOPs (``Q Kᵀ`` and ``P V`` are ``2·Sq·Sk·D`` each per head), halved for causal with
``Sq = Sk`` (half the score matrix is visible); with a window, ``4·B·Hq·D`` per visible (query, key) pair
(:func:`visible_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant, wide_dtype
from implementations.ops.spec import Expected, OpSpec
from implementations.variants import Variants


@dataclass(frozen=True)
class AttentionInputs:
    """A validated forward call: the tensors, the resolved causal variant and scale, the tile sizes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: CausalVariant | None
    scale: float
    tiles: tuple[int, int] | None = None
    variants: Variants = Variants()


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
          causal: bool | str | None = None, scale: float | None = None, tiles: tuple[int, int] | None = None,
          window: tuple[int, int] | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
          alibi_slopes: torch.Tensor | None = None) -> AttentionInputs:
    """The boundary check of the forward (validate.attention_args, validate.variant_args)."""
    variant, resolved = validate.attention_args(caps, q, k, v, causal=causal, scale=scale, tiles=tiles)
    variants = validate.variant_args(caps, scores_shape(q, k), q.device, window=window, softcap=softcap,
                                     bias=bias, alibi_slopes=alibi_slopes)
    return AttentionInputs(q, k, v, variant, resolved, tuple(tiles) if tiles is not None else None, variants)


def scores_shape(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """``[B, Hq, Sq, Sk]``, the shape a bias broadcasts to."""
    return (q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    q = inputs["q"]
    return [Expected.like("out", q), Expected("lse", tuple(q.shape[:3]), wide_dtype(q.dtype), q.device)]


def forward_flops(B: int, Hq: int, Sq: int, Sk: int, D: int, causal: bool) -> int:
    """``4·B·Hq·Sq·Sk·D``, halved for causal; the causal count is defined for ``Sq = Sk`` only (SPEC)."""
    if causal and Sq != Sk:
        raise ValueError(f"the causal FLOP count is defined for Sq = Sk only, got Sq={Sq}, Sk={Sk}")
    full = 4 * B * Hq * Sq * Sk * D
    return full // 2 if causal else full


def visible_pairs(Sq: int, Sk: int, *, causal_offset: int | None = None, window: tuple[int, int] | None = None) -> int:
    """The (query, key) pairs a window (and causal offset ``j <= i + offset``) leaves visible, summed over rows:
    the work a kernel that skips invisible keys does (``4·D`` FLOPs per pair and head)."""
    total = 0
    for i in range(Sq):
        lo, hi = 0, Sk - 1
        if window is not None and window[0] >= 0:
            lo = max(lo, i + Sk - Sq - window[0])
        if window is not None and window[1] >= 0:
            hi = min(hi, i + Sk - Sq + window[1])
        if causal_offset is not None:
            hi = min(hi, i + causal_offset)
        total += max(0, hi - lo + 1)
    return total


SPEC: OpSpec[AttentionInputs] = OpSpec(
    name="attention",
    signature="attention(q, k, v, *, causal=None, scale=None, tiles=None, window=None, softcap=None, bias=None, "
              "alibi_slopes=None) -> (out, lse)",
    inputs=("q", "k", "v"),
    outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.dtypes,
    validate=check,
    expected=expected,
)
