"""Decode attention over a paged KV cache with split-KV (flash-decoding), SPEC's paged-decode clause.

``q [B, Hq, Sq, D]`` holds the last ``Sq`` (<= 16) positions of each sequence: query i of sequence b sees keys
``j <= kv_lens[b] - Sq + i``. Key j of sequence b lives in page ``block_table[b, j // page_size]`` at slot
``j % page_size`` of ``k_pages, v_pages [num_pages, page_size, Hk, D]``; pages may be in any order.

Two kernels. ``decode_split_kernel``: one program per (split, batch * KV head) reads its split's keys once
for all the query rows of its KV head (the ``GROUP * Sq`` rows of the query heads sharing it, GQA) and
writes each row's partial ``out_s = sum_j p_j v_j / l_s`` and ``lse_s = m_s + log l_s`` (float32; a split
with no visible key gives ``out_s = 0, lse_s = -inf``). ``decode_merge_kernel``: per row, the partials merge
with the softmax-statistics algebra (SMX-2): ``M = max_s lse_s``, ``w_s = exp(lse_s - M)``,
``out = sum_s w_s out_s / sum_s w_s``, ``lse = M + log sum_s w_s``.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import LN2_K, LOG2E, LOG2E_K, block_d, dot_precision, mma, next_pow2, upcast_dots

#: keys per tile of the split kernel (on the interpreter, large tiles also mean few Python-level steps)
BLOCK_N = 64


@triton.jit
def _page_tile(PAGES, BT, offs_n, n_ok, hk, offs_d, d_ok, stride_p, stride_s, stride_h, stride_d,
               PAGE: tl.constexpr):
    """Keys ``offs_n`` of one sequence (its block-table row ``BT``) for KV head ``hk``, zero where not ``n_ok``."""
    page = tl.load(BT + offs_n // PAGE, mask=n_ok, other=0).to(tl.int64)
    row = page * stride_p + (offs_n % PAGE).to(tl.int64) * stride_s + hk * stride_h
    return tl.load(PAGES + row[:, None] + offs_d[None, :] * stride_d, mask=n_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def decode_split_kernel(
    Q, KP, VP, BT, LENS, OUT_P, LSE_P,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kp, stride_ks, stride_kh, stride_kd,
    stride_vp, stride_vs, stride_vh, stride_vd, stride_bt,
    Hk, GROUP, Sq, D, keys_per_split, qk_scale,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Grid ``(num_splits, B*Hk)``; row ``r = g*Sq + i`` is query ``i`` of head ``hk*GROUP + g``. ``OUT_P``
    float32 ``[B, Hq, Sq, num_splits, D]`` and ``LSE_P`` ``[B, Hq, Sq, num_splits]``, contiguous."""
    split = tl.program_id(0)
    b = (tl.program_id(1) // Hk).to(tl.int64)
    hk = (tl.program_id(1) % Hk).to(tl.int64)
    kv_len = tl.load(LENS + b)
    rows = tl.arange(0, BLOCK_M)
    i = rows % Sq
    h = hk * GROUP + rows // Sq
    row_ok = rows < GROUP * Sq
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    last = kv_len - Sq + i  # the last key each row sees
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, kv_len)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        k = _page_tile(KP, BT + b * stride_bt, offs_n, n_ok, hk, offs_d, d_ok,
                       stride_kp, stride_ks, stride_kh, stride_kd, PAGE)
        v = _page_tile(VP, BT + b * stride_bt, offs_n, n_ok, hk, offs_d, d_ok,
                       stride_vp, stride_vs, stride_vh, stride_vd, PAGE)
        s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PREC, UPCAST) * qk_scale
        s = tl.where(n_ok[None, :] & (offs_n[None, :] <= last[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], PREC, UPCAST)
        m_i = m_new
    l_div = tl.where(l_i == 0.0, 1.0, l_i)
    part = ((b * Hk + hk) * GROUP * Sq + rows) * tl.num_programs(0) + split  # row index into [B, Hq, Sq, S]
    tl.store(OUT_P + part[:, None] * D + offs_d[None, :], acc / l_div[:, None], mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE_P + part, tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_div)) * LN2_K), mask=row_ok)


@triton.jit
def decode_merge_kernel(OUT_P, LSE_P, O, LSE, stride_ob, stride_oh, stride_om, stride_od, Hq, Sq, D, NS,
                        BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid ``(B*Hq*Sq,)``: merge one row's ``NS`` partials (module docstring); no visible key at all gives
    ``out = 0, lse = -inf``."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NS
    d_ok = offs_d < D
    lse_s = tl.load(LSE_P + row * NS + offs_s, mask=s_ok, other=float("-inf")) * LOG2E_K
    m = tl.max(lse_s, 0)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse_s - m_ref)
    total = tl.sum(w, 0)
    parts = tl.load(OUT_P + (row * NS + offs_s)[:, None] * D + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    b = row // (Hq * Sq)
    h = (row // Sq) % Hq
    i = row % Sq
    tl.store(O + b * stride_ob + h * stride_oh + i * stride_om + offs_d * stride_od, out.to(O.dtype.element_ty),
             mask=d_ok)
    tl.store(LSE + row, tl.where(total == 0.0, float("-inf"), (m_ref + tl.log2(total)) * LN2_K))


def default_splits(batch_kv_heads: int, max_keys: int, device: torch.device) -> int:
    """Splits per sequence: enough programs for two per SM on the GPU (four on the interpreter at most), and
    no split shorter than 256 keys (64 on the interpreter)."""
    if device.type == "cpu":
        return max(1, min(4, triton.cdiv(max_keys, 64)))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, batch_kv_heads), triton.cdiv(max_keys, 256)))


def attention_decode_paged(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
                           kv_lens: torch.Tensor, scale: float, num_splits: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Hq, Sq, D], lse float32 [B, Hq, Sq])`` of validated inputs (module docstring)."""
    B, Hq, Sq, D = q.shape
    page_size, Hk = k_pages.shape[1], k_pages.shape[2]
    max_keys = block_table.shape[1] * page_size
    splits = num_splits or default_splits(B * Hk, max_keys, q.device)
    keys_per_split = triton.cdiv(triton.cdiv(max_keys, splits), BLOCK_N) * BLOCK_N
    out_p = torch.empty((B, Hq, Sq, splits, D), dtype=torch.float32, device=q.device)
    lse_p = torch.empty((B, Hq, Sq, splits), dtype=torch.float32, device=q.device)
    bd = block_d(D)
    decode_split_kernel[(splits, B * Hk)](
        q, k_pages, v_pages, block_table, kv_lens, out_p, lse_p, *q.stride(), *k_pages.stride(),
        *v_pages.stride(), block_table.stride(0), Hk, Hq // Hk, Sq, D, keys_per_split, scale * LOG2E,
        PAGE=page_size, BLOCK_M=max(16, next_pow2(Hq // Hk * Sq)), BLOCK_N=BLOCK_N, BLOCK_D=bd,
        PREC=dot_precision(q.dtype), UPCAST=upcast_dots(q.device), num_warps=4,
    )
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((B, Hq, Sq), torch.float32, q.device)
    decode_merge_kernel[(B * Hq * Sq,)](out_p, lse_p, out, lse, *out.stride(), Hq, Sq, D, splits,
                                        BLOCK_S=next_pow2(splits), BLOCK_D=bd, num_warps=4)
    return out, lse
