"""``attention(q, k, v, *, causal=None, scale=None, tiles=None) -> (out, lse)`` (SPEC ATT).

``q [B, Hq, Sq, D]``, ``k, v [B, Hk, Sk, D]`` with ``Hq % Hk == 0`` (query head h reads KV head
``h // (Hq // Hk)``); ``causal`` None, True (the backend's ``causal_default``), ``"top_left"`` or
``"bottom_right"``; ``scale`` defaults to ``1/sqrt(D)``; ``tiles = (block_m, block_n)`` only where the
backend declares tile sizes. Returns ``out`` like q and ``lse [B, Hq, Sq]`` in natural log, float32 (float64
for float64 inputs).

Cost: ``4·B·Hq·Sq·Sk·D`` FLOPs (``Q Kᵀ`` and ``P V`` are ``2·Sq·Sk·D`` each per head), halved for causal with
``Sq = Sk`` (half the score matrix is visible).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant, wide_dtype
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class AttentionInputs:
    """A validated forward call: the tensors, the resolved causal variant and scale, the tile sizes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: CausalVariant | None
    scale: float
    tiles: tuple[int, int] | None = None


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
          causal: bool | str | None = None, scale: float | None = None,
          tiles: tuple[int, int] | None = None) -> AttentionInputs:
    """The boundary check of the forward (validate.attention_args)."""
    variant, resolved = validate.attention_args(caps, q, k, v, causal=causal, scale=scale, tiles=tiles)
    return AttentionInputs(q, k, v, variant, resolved, tuple(tiles) if tiles is not None else None)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    q = inputs["q"]
    return [Expected.like("out", q), Expected("lse", tuple(q.shape[:3]), wide_dtype(q.dtype), q.device)]


def forward_flops(B: int, Hq: int, Sq: int, Sk: int, D: int, causal: bool) -> int:
    """``4·B·Hq·Sq·Sk·D``, halved for causal; the causal count is defined for ``Sq = Sk`` only (SPEC)."""
    if causal and Sq != Sk:
        raise ValueError(f"the causal FLOP count is defined for Sq = Sk only, got Sq={Sq}, Sk={Sk}")
    full = 4 * B * Hq * Sq * Sk * D
    return full // 2 if causal else full


SPEC: OpSpec[AttentionInputs] = OpSpec(
    name="attention",
    signature="attention(q, k, v, *, causal=None, scale=None, tiles=None) -> (out, lse)",
    inputs=("q", "k", "v"),
    outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.dtypes,
    validate=check,
    expected=expected,
)
