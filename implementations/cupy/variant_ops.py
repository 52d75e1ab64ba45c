"""The CuPy backend's attention variants: packed variable-length sequences and the sliding window through
``attn_fwd`` (:mod:`.attention`), and paged-KV decode with split-KV (``decode_paged.cu``).

The backward kernels (``attention_bwd.cu``) take the same band and packed sequences (``attention_varlen_backward``).
"""

from __future__ import annotations

import math

import torch

from implementations import ops
from implementations.base import InvalidInputError, new_output
from implementations.cupy import _kernels as K
from implementations.cupy.attention import launch_backward, launch_forward, vec_ok
from implementations.ops import implementation

DECODE_THREADS = 128  # threads per decode_split CTA (decode_paged.cu)
DECODE_MAX_ROWS = 8  # query rows per decode_split CTA; a KV head's larger GQA group takes several CTAs
DECODE_CTAS_PER_SM = 16  # CTAs per SM decode_splits aims at: ~5 waves of the 3 resident per SM
DECODE_MIN_SPLIT_KEYS = 256  # shortest split decode_splits makes
#: splits start at multiples of this many keys, so with a page size that is a multiple of 4 a key group's 4
#: consecutive keys of a step share a page (one block-table entry per step)
DECODE_SPLIT_ALIGN = 16


def packed(t: torch.Tensor) -> torch.Tensor:
    """``[total, H, D]`` as the kernel's ``[1, H, total, D]`` view (same storage)."""
    return t.permute(1, 0, 2).unsqueeze(0)


def _unit_last(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise InvalidInputError(f"{name} must have unit stride in its last dimension (got strides {t.stride()})")


def _pow2_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()


def decode_layout(D: int, group_rows: int) -> tuple[int, int]:
    """``(threads per key, rows per CTA)`` of ``decode_split``: each thread holds 8 head dims of a key, so a key
    takes the power of two >= D / 8 threads (at most 32 for D <= 256: one warp's xor-shuffles sum a score); a
    CTA takes the power of two >= the KV head's ``GROUP * Sq`` query rows, at most ``DECODE_MAX_ROWS``."""
    return _pow2_at_least(-(-D // 8)), min(DECODE_MAX_ROWS, _pow2_at_least(group_rows))


def decode_splits(ctas_per_split: int, max_keys: int, device: torch.device) -> int:
    """Splits per sequence when the caller leaves it open, for ``ctas_per_split = B * Hk * row chunks`` CTAs per
    split: ``min(ceil(DECODE_CTAS_PER_SM * SMs / ctas_per_split), ceil(max_keys / DECODE_MIN_SPLIT_KEYS))``, at
    least 1. Enough CTAs for several waves over the SMs (3 fit an SM at once), so the last wave's idle SMs cost
    a small part of the time, and no split so short that its fixed costs (block-table prologue, the merge of its
    key groups through shared memory, its partial rows written and merged again) weigh on its key loop."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    by_waves = -(-DECODE_CTAS_PER_SM * sms // ctas_per_split)
    return max(1, min(by_waves, -(-max_keys // DECODE_MIN_SPLIT_KEYS)))


def decode_paged(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                 kv_lens: torch.Tensor, scale: float, num_splits: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Hq, Sq, D], lse [B, Hq, Sq])``: ``decode_split`` writes float32 partials per split and chunk of
    query rows, ``decode_merge`` merges them (see ``decode_paged.cu``)."""
    B, Hq, Sq, D = q.shape
    page, Hk = k_pages.shape[1], k_pages.shape[2]
    _unit_last(q=q, k_pages=k_pages, v_pages=v_pages)
    table, lens = block_table.contiguous(), kv_lens.contiguous()
    max_keys = table.shape[1] * page
    threads_per_key, rows_per_cta = decode_layout(D, Hq // Hk * Sq)
    chunks = -(-(Hq // Hk * Sq) // rows_per_cta)
    splits = num_splits or decode_splits(B * Hk * chunks, max_keys, q.device)
    keys_per_split = -(-max_keys // splits)
    keys_per_split = -(-keys_per_split // DECODE_SPLIT_ALIGN) * DECODE_SPLIT_ALIGN
    out_p = torch.empty((B, Hq, Sq, splits, D), dtype=torch.float32, device=q.device)
    lse_p = torch.empty((B, Hq, Sq, splits), dtype=torch.float32, device=q.device)
    T, VEC = K.CXX_TYPE[q.dtype], K.cxx_bool(vec_ok(D, k_pages, v_pages))
    args = (q, k_pages, v_pages, table, lens, out_p, lse_p, K.i32(Hq), K.i32(Hk), K.i32(Sq), K.i32(D), K.i32(page),
            K.i32(table.stride(0)), K.i32(keys_per_split), *(K.i64(s) for s in q.stride()[:3]),
            *(K.i64(s) for s in k_pages.stride()[:3]), *(K.i64(s) for s in v_pages.stride()[:3]),
            K.f32(scale * math.log2(math.e)))
    expr = f"decode_split<{T}, {threads_per_key}, {rows_per_cta}, {VEC}>"
    K.launch(K.kernel("decode_paged", expr, q.device), (splits * chunks, B * Hk), (DECODE_THREADS,), args, q.device)
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((B, Hq, Sq), torch.float32, q.device)
    rows = B * Hq * Sq
    args = (out_p, lse_p, out, lse, K.i32(Hq), K.i32(Sq), K.i32(D), K.i32(splits),
            *(K.i64(s) for s in out.stride()[:3]), K.i64(rows))
    K.launch(K.kernel("decode_paged", f"decode_merge<{T}>", q.device), (-(-rows // 8),), (256,), args, q.device)
    return out, lse


class VariantOps:
    """The variant operations of :class:`~.backend.CupyBackend` (mixed into it)."""

    @implementation("attention_varlen")
    def attention_varlen(self, inp: ops.VarlenInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """VLEN: one CTA per query block of one sequence; ``lse [Hq, total_q]``."""
        q, k, v = inp.q, inp.k, inp.v
        _unit_last(q=q, k=k, v=v)
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output((q.shape[1], q.shape[0]), torch.float32, q.device)
        seqs = (inp.cu_seqlens_q.contiguous(), inp.cu_seqlens_k.contiguous(), inp.max_seqlen_q)
        launch_forward(packed(q), packed(k), packed(v), packed(out), lse.unsqueeze(0), inp.causal,
                       inp.variants.window, inp.scale, cu_seqlens=seqs)
        return out, lse

    @implementation("attention_varlen_backward")
    def attention_varlen_backward(self, inp: ops.VarlenBackwardInputs
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VLEN backward: ``(dq, dk, dv)`` of the packed sequences, recomputed from ``lse [Hq, total_q]``."""
        q, k, v = inp.q, inp.k, inp.v
        _unit_last(q=q, k=k, v=v, out=inp.out, dout=inp.dout)
        if inp.lse.dtype != torch.float32:
            raise InvalidInputError(f"lse must be float32, got {inp.lse.dtype}")
        grads = (new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device),
                 new_output(v.shape, v.dtype, v.device))
        seqs = (inp.cu_seqlens_q.contiguous(), inp.cu_seqlens_k.contiguous(), inp.max_seqlen_q, inp.max_seqlen_k)
        launch_backward(packed(q), packed(k), packed(v), packed(inp.out), inp.lse.contiguous().unsqueeze(0),
                        packed(inp.dout), tuple(packed(g) for g in grads), inp.causal, inp.variants.window,
                        inp.scale, cu_seqlens=seqs)
        return grads

    @implementation("attention_decode_paged")
    def attention_decode_paged(self, inp: ops.DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """DEC: split-KV partials merged with the softmax-statistics algebra."""
        return decode_paged(inp.q, inp.k_pages, inp.v_pages, inp.block_table, inp.kv_lens, inp.scale,
                            inp.num_splits)
