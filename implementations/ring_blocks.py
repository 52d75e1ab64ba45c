"""The single-device calls behind one (query chunk, key chunk) pair of ring attention, and the merge.

A query chunk holds global positions ``[qs, qs + m)``, a key chunk ``[ks, ks + n)``; with the causal
``offset`` of the global problem (0 top-left, ``Sk - Sq`` bottom-right) key ``j`` of the chunk is visible to
query ``i`` of the chunk iff ``j <= i + delta`` with ``delta = qs + offset - ks``. :func:`pieces` cuts that
mask into calls a single-device backend answers exactly: a whole block without mask, or a bottom-right
causal block (``j <= i + Sk' - Sq'``); rows that see no key of the chunk are left out (they add nothing).

Partial results are merged with the softmax statistics (SPEC SMX-4): ``L = logaddexp(L_a, L_b)``,
``O = e^(L_a - L)·O_a + e^(L_b - L)·O_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations.base import CausalVariant


@dataclass(frozen=True)
class Piece:
    """One single-device call: query rows ``[row0, row1)`` and keys ``[key0, key1)`` of the chunks, masked
    bottom-right (``causal``) or not at all."""

    row0: int
    row1: int
    key0: int
    key1: int
    causal: CausalVariant | None


def pieces(m: int, n: int, delta: int | None) -> list[Piece]:
    """The calls covering a chunk pair of ``m`` queries and ``n`` keys with ``j <= i + delta`` visible
    (``delta`` None: no mask)."""
    if delta is None or delta >= n - 1:
        return [Piece(0, m, 0, n, None)] if m and n else []
    first = max(0, -delta)  # rows before it see no key of the chunk
    if first >= m:
        return []
    shift = first + delta  # row first + i' sees keys j <= i' + shift, shift >= 0
    rows = m - first
    if rows + shift <= n:  # every row sees a prefix of the keys, ending on the diagonal
        return [Piece(first, m, 0, rows + shift, "bottom_right")]
    partial = n - 1 - shift  # rows before first + partial see fewer than n keys; the rest see all of them
    found = [Piece(first, first + partial, 0, partial + shift, "bottom_right"), Piece(first + partial, m, 0, n, None)]
    return [p for p in found if p.row1 > p.row0]


def chunk_delta(causal: CausalVariant | None, Sq: int, Sk: int, q_start: int, k_start: int) -> int | None:
    """``delta`` of a chunk pair (see the module docstring); None when not causal."""
    if causal is None:
        return None
    offset = 0 if causal == "top_left" else Sk - Sq
    return q_start + offset - k_start


def merge(out: torch.Tensor, lse: torch.Tensor, part_out: torch.Tensor, part_lse: torch.Tensor) -> None:
    """Fold a partial ``(part_out, part_lse)`` into the running ``(out, lse)`` in place (SMX-4); rows where
    both are empty (lse -inf) stay 0 and -inf, without NaN."""
    new_lse = torch.logaddexp(lse, part_lse.to(lse.dtype))
    empty = torch.isneginf(new_lse)
    keep = torch.where(empty, 0.0, torch.exp(lse - new_lse)).unsqueeze(-1)
    take = torch.where(empty, 0.0, torch.exp(part_lse.to(lse.dtype) - new_lse)).unsqueeze(-1)
    out.mul_(keep).add_(take * part_out.to(out.dtype))
    lse.copy_(new_lse)
