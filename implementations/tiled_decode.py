"""Split-KV (flash-decoding) over a paged KV cache in NumPy, the decode of the ``reference-tiled`` backend.

For each sequence the pages its ``kv_len`` keys occupy are cut into ``num_splits`` runs of consecutive pages.
Each split walks its pages (one page a tile, read through the block table, never gathered) with
FlashAttention-2's online softmax and yields a partial ``(O_s, L_s)``: its output normalised over its own
keys, and their log-sum-exp. The splits are then merged with the softmax-statistics algebra (SMX-4):
``L = logaddexp_s L_s``, ``O = Σ_s e^(L_s - L) · O_s``. A split none of whose keys a query sees has
``L_s = -inf`` and weight 0.
"""

from __future__ import annotations

import numpy as np
import torch

from implementations._numpy import as_numpy, finite_or_zero, log_or_neg_inf, write
from implementations.base import wide_dtype
from implementations.ops import DecodeInputs
from implementations.tiled_attention import OnlineSoftmax, grouped, query_rows

#: splits per sequence when the caller leaves ``num_splits`` to the backend (at most one per page)
DEFAULT_SPLITS = 4


def split_pages(pages: int, num_splits: int) -> list[range]:
    """``pages`` page slots cut into ``num_splits`` runs of consecutive slots, as even as they go (a run may
    be empty when there are more splits than pages)."""
    bounds = [pages * s // num_splits for s in range(num_splits + 1)]
    return [range(bounds[s], bounds[s + 1]) for s in range(num_splits)]


def merge_partials(partials: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """SMX-4: ``L = logaddexp_s L_s`` and ``O = Σ_s e^(L_s - L) O_s``; rows with every ``L_s = -inf`` get
    ``O = 0``, ``L = -inf``."""
    lses = np.stack([lse for _, lse in partials])
    top = finite_or_zero(lses.max(axis=0))
    total = np.exp(lses - top).sum(axis=0)
    lse = top + log_or_neg_inf(total)
    out = np.zeros_like(partials[0][0])
    for o_s, lse_s in partials:
        out += np.exp(lse_s - finite_or_zero(lse))[..., None] * o_s
    return out, lse


def _split(inp: DecodeInputs, b: int, q_b: np.ndarray, slots: range) -> tuple[np.ndarray, np.ndarray]:
    """The partial ``(O_s, L_s)`` of sequence ``b`` over its page slots ``slots``: one page per tile, query
    ``i`` of ``Sq`` seeing keys ``j <= kv_len - Sq + i``."""
    Sq, length, page = inp.q.shape[2], inp.lengths[b], inp.page_size
    G = inp.q.shape[1] // inp.k_pages.shape[2]
    dtype = wide_dtype(inp.q.dtype)
    state = OnlineSoftmax.empty(q_b)
    rows = np.tile(np.arange(Sq), G)  # the query index of each stacked row (G heads of Sq queries)
    for slot in slots:
        j0, j1 = slot * page, min(slot * page + page, length)
        index = int(inp.block_table[b, slot])
        k_j, v_j = (as_numpy(x[index, : j1 - j0].transpose(0, 1)[None], dtype) for x in (inp.k_pages, inp.v_pages))
        s = inp.scale * (q_b @ k_j.swapaxes(-1, -2))
        s[..., np.arange(j0, j1)[None, :] > (rows + length - Sq)[:, None]] = -np.inf
        state.add(s, v_j)
    return state.result()


def decode_into(out: torch.Tensor, lse: torch.Tensor, inp: DecodeInputs) -> None:
    """Split-KV decode of every sequence of ``inp`` into ``out [B, Hq, Sq, D]`` and ``lse [B, Hq, Sq]``."""
    Hk, page = inp.k_pages.shape[2], inp.page_size
    dtype = wide_dtype(inp.q.dtype)
    q5, out5, lse4 = grouped(inp.q, Hk), grouped(out, Hk), grouped(lse, Hk)
    Sq = inp.q.shape[2]
    for b, length in enumerate(inp.lengths):
        q_b = query_rows(q5[b:b + 1], 0, Sq, dtype)
        pages = -(-length // page)
        splits = split_pages(pages, inp.num_splits or min(DEFAULT_SPLITS, pages))
        o_b, lse_b = merge_partials([_split(inp, b, q_b, slots) for slots in splits])
        write(out5[b:b + 1], o_b.reshape(out5[b:b + 1].shape))
        write(lse4[b:b + 1], lse_b.reshape(lse4[b:b + 1].shape))
