"""``attention_decode_paged(q, k_pages, v_pages, block_table, kv_lens, *, scale=None, num_splits=None)
-> (out, lse)`` (SPEC DEC).

Decode over a paged KV cache: ``q [B, Hq, Sq, D]`` (``Sq <= 16``) holds the LAST ``Sq`` positions of each
sequence; sequence ``b``'s keys and values are rows ``0 .. kv_lens[b] - 1`` of the pages
``block_table[b, 0], block_table[b, 1], ...`` of ``k_pages, v_pages [num_pages, page_size, Hk, D]`` (key ``j``
in page ``block_table[b, j // page_size]``, row ``j % page_size``); query ``i`` sees keys
``j <= kv_lens[b] - Sq + i`` (bottom-right causal). ``block_table`` and ``kv_lens`` are int32, ``kv_lens >= Sq``;
``num_splits`` the split-KV count (None: the backend's choice), whose partial results are merged with the
softmax-statistics algebra (SMX-4). Returns ``out`` like q and ``lse [B, Hq, Sq]`` float32 (float64 for
float64 inputs).

Cost: the fewest bytes are reading each sequence's K and V once, ``2·Σ_b kv_lens[b]·Hk·D·itemsize``, plus
q and out (the KV read dominates: decode is bandwidth-bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, wide_dtype
from implementations.ops.attention import naive as dense_naive
from implementations.ops.attention import oracle as dense_oracle
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class DecodeInputs:
    """A validated paged decode call; ``lengths`` is ``kv_lens`` read on the host."""

    q: torch.Tensor
    k_pages: torch.Tensor
    v_pages: torch.Tensor
    block_table: torch.Tensor
    kv_lens: torch.Tensor
    scale: float
    num_splits: int | None
    lengths: tuple[int, ...]

    @property
    def page_size(self) -> int:
        return self.k_pages.shape[1]


def check(caps: Capabilities, q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
          block_table: torch.Tensor, kv_lens: torch.Tensor, *, scale: float | None = None,
          num_splits: int | None = None) -> DecodeInputs:
    """The boundary check (validate.decode_args)."""
    lengths = validate.decode_args(caps, q, k_pages, v_pages, block_table, kv_lens, num_splits)
    return DecodeInputs(q, k_pages, v_pages, block_table, kv_lens, validate.scale_arg(scale, q.shape[3]),
                        num_splits, tuple(lengths.tolist()))


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    q = inputs["q"]
    return [Expected.like("out", q), Expected("lse", tuple(q.shape[:3]), wide_dtype(q.dtype), q.device)]


def min_bytes(kv_lens: list[int], Hq: int, Hk: int, Sq: int, D: int, itemsize: int) -> int:
    """Read K and V of each sequence once (``2·Σ kv_lens·Hk·D``), read q and write out (``2·B·Hq·Sq·D``),
    all in ``itemsize``-byte elements, and write lse (4 bytes per row)."""
    B = len(kv_lens)
    return (2 * sum(kv_lens) * Hk * D + 2 * B * Hq * Sq * D) * itemsize + 4 * B * Hq * Sq


def kv_bytes(kv_lens: list[int], Hk: int, D: int, itemsize: int) -> int:
    """The KV cache bytes a decode step must read: ``2·Σ kv_lens·Hk·D·itemsize``."""
    return 2 * sum(kv_lens) * Hk * D * itemsize


# ------------------------------------------------------------------------------------------------
# Oracle: each sequence's keys gathered from its pages, dense bottom-right causal attention


def _run(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
         kv_lens: torch.Tensor, *, scale: float, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [B, Hq, Sq, D]``, ``lse [B, Hq, Sq]`` on the CPU: key j of sequence b is row ``j % page_size`` of
    page ``block_table[b, j // page_size]`` (DEC-1); the float64 oracle (``dtype`` None) or the naive form."""
    page = k_pages.shape[1]
    outs, lses = [], []
    for b in range(q.shape[0]):
        n = int(kv_lens[b])
        pages = block_table[b, : -(-n // page)].long()
        k, v = (x[pages].flatten(0, 1)[:n].transpose(0, 1)[None] for x in (k_pages, v_pages))
        o, l = (dense_oracle(q[b:b + 1], k, v, causal="bottom_right", scale=scale) if dtype is None
                else dense_naive(q[b:b + 1], k, v, causal="bottom_right", scale=scale, dtype=dtype))
        outs.append(o.cpu())
        lses.append(l.cpu())
    return torch.cat(outs), torch.cat(lses)


def oracle(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
           kv_lens: torch.Tensor, *, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle of DEC-1, on the CPU."""
    return _run(q, k_pages, v_pages, block_table, kv_lens, scale=scale, dtype=None)


def naive(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
          kv_lens: torch.Tensor, *, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive form in ``dtype``, sequence by sequence."""
    return _run(q, k_pages, v_pages, block_table, kv_lens, scale=scale, dtype=dtype)


SPEC: OpSpec[DecodeInputs] = OpSpec(
    name="attention_decode_paged",
    signature="attention_decode_paged(q, k_pages, v_pages, block_table, kv_lens, *, scale=None, num_splits=None) "
              "-> (out, lse)",
    inputs=("q", "k_pages", "v_pages", "block_table", "kv_lens"), outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.decode_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"out": 2.0, "lse": 2.0},
)
