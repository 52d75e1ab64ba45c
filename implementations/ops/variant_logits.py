"""The oracle's side of the attention variants (SPEC VAR): the window's visibility and the logit terms, written
from the clauses for the materialising definition of :mod:`implementations.ops.attention`. Backends never
import this module (a bug must not hide in both the oracle and a kernel).

Order of the logits of query i and key j: ``s = scale·q_i·k_j``, ``s ← cap·tanh(s / cap)``, ``+ bias``,
``- slope_h·|i + Sk - Sq - j|``, then ``-inf`` where the key is invisible (causal AND window).
"""

from __future__ import annotations

import torch


def window_visibility(Sq: int, Sk: int, window: tuple[int, int] | None, device: torch.device | str,
                      rows: range) -> torch.Tensor | None:
    """``[len(rows), Sk]`` bool, True where key j is inside query i's window
    ``i + Sk - Sq - left <= j <= i + Sk - Sq + right`` (-1: unbounded); None without a window."""
    if window is None:
        return None
    i = torch.as_tensor(rows, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    left, right = window
    inside = torch.ones(len(rows), Sk, dtype=torch.bool, device=device)
    if left >= 0:
        inside &= j >= i + Sk - Sq - left
    if right >= 0:
        inside &= j <= i + Sk - Sq + right
    return inside


def capped_logits(scores: torch.Tensor, *, Sq: int, rows: range, softcap: float | None = None,
                  bias: torch.Tensor | None = None, alibi_slopes: torch.Tensor | None = None,
                  flipped: bool = False) -> torch.Tensor:
    """``scores [B, Hq, len(rows), Sk]`` (the scaled products of query rows ``rows`` of ``Sq``) capped, plus the
    bias (a bool mask as 0 / -inf) and ALiBi, in ``scores``' dtype, differentiably. ``flipped``: the key axis
    of ``scores`` is reversed (the naive form sums keys in reverse order), so the terms are reversed too."""
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    Sk = scores.shape[-1]
    terms = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if bias is not None:
        full = torch.broadcast_to(bias, (scores.shape[0], scores.shape[1], Sq, Sk))[:, :, rows.start:rows.stop]
        full = full.to(scores.device)
        terms = terms + (torch.where(full, 0.0, float("-inf")).to(scores.dtype) if full.dtype == torch.bool
                         else full.to(scores.dtype))
    if alibi_slopes is not None:
        i = torch.as_tensor(rows, device=scores.device)[:, None]
        j = torch.arange(Sk, device=scores.device)[None, :]
        distance = (i + Sk - Sq - j).abs().to(scores.dtype)
        terms = terms - alibi_slopes.to(scores.device, scores.dtype)[:, None, None] * distance
    if terms.dim():
        terms = terms.flip(-1) if flipped else terms
    return scores + terms
