"""Attention forward: one program per (query block, batch*head), online softmax over key blocks.

For query row i and visible keys j (SPEC ATT-1..ATT-3):

    s_ij = scale * q_i . k_j                     (kept in base 2: s_ij * log2(e))
    m_i  = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)
    out_i = sum_j exp(s_ij - m_i) v_j / l_i,   lse_i = m_i + log(l_i)   (natural log, float32)

computed block by block: a new key block with row maximum ``m'`` rescales the running sum and the
accumulator by ``exp(m - m')`` (FlashAttention's online softmax). Key j is visible to query i iff
``j < Sk`` and, when causal, ``j <= i + off`` with ``off = 0`` (top-left) or ``Sk - Sq`` (bottom-right).

Key blocks are split in two loops: blocks every row of the query block sees completely run without
masks; the blocks on the causal diagonal and the ragged end of the keys run masked. Key blocks no row
sees are skipped. A row that sees no key (ATT-4) keeps ``m = -inf, l = 0`` and gets ``out = 0,
lse = -inf``: the masked loop exponentiates against 0 instead of ``-inf`` so no ``-inf - -inf`` appears.
GQA (ATT-6): query head h reads KV head ``h // group`` through its strides; K and V are never copied.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import LN2_K, LOG2E, LaunchConfig, block_d, dot_precision, fit_stages, load_tile, mma, upcast_dots

#: GPU tile table for 16-bit inputs by head-dim tile (block_m, block_n, warps, stages); see NOTES.md
GPU_FORWARD_16BIT: dict[int, LaunchConfig] = {
    16: LaunchConfig(128, 64, 8, 3),
    32: LaunchConfig(128, 64, 8, 3),
    64: LaunchConfig(128, 64, 8, 3),
    128: LaunchConfig(128, 64, 8, 3),  # fastest of 4 at S=4096, causal and not (H200, NOTES.md)
    256: LaunchConfig(128, 64, 8, 2),
}
#: GPU tiles for float32: exact "ieee" products run on the FMA units, whose operands live in registers,
#: so the tiles are small (larger ones spill heavily and take minutes to compile at D=256)
GPU_FORWARD_FP32 = LaunchConfig(32, 16, 4, 1)
#: the interpreter runs one config: large tiles mean few Python-level programs
INTERPRETER_TILE = LaunchConfig(64, 64, 4, 1)


def causal_offset(causal: str | None, sq: int, sk: int) -> int:
    """``off`` of the visibility rule ``j <= i + off`` (SPEC ATT-3); ignored when not causal."""
    return sk - sq if causal == "bottom_right" else 0


def forward_config(head_dim: int, dtype: torch.dtype, device: torch.device,
                   tiles: tuple[int, int] | None = None) -> LaunchConfig:
    """The launch config for these inputs; ``tiles`` overrides the tile and keeps warps/stages fitting."""
    if device.type == "cpu":
        base = INTERPRETER_TILE
    elif dtype == torch.float32:
        base = GPU_FORWARD_FP32
    else:
        base = GPU_FORWARD_16BIT[block_d(head_dim)]
    if tiles is not None:
        base = LaunchConfig(tiles[0], tiles[1], 8 if tiles[0] >= 128 else 4, base.num_stages)
    es = dtype.itemsize
    bd = block_d(head_dim)
    return fit_stages(base, streamed=2 * base.block_n * bd * es, resident=base.block_m * bd * es)


@triton.jit
def _forward_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, lo, hi, Sk, D, off, qk_scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Fold key blocks ``[lo, hi)`` into ``(acc, l_i, m_i)``; ``MASKED`` applies ``j < Sk`` and causality."""
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        n_ok = offs_n < Sk
        kt = load_tile(kt_ptrs, n_ok, d_ok, MASKED, EVEN_D, True)
        v = load_tile(v_ptrs, n_ok, d_ok, MASKED, EVEN_D, False)
        s = mma(q, kt, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PREC, UPCAST) * qk_scale
        if MASKED:
            visible = offs_n[None, :] < Sk
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + off)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
        else:
            m_ref = m_new
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], PREC, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_forward_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    Hq, GROUP, Sq, Sk, D, off, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Grid ``(cdiv(Sq, BLOCK_M), B*Hq)``; query blocks are taken last-first (causal: longest first).

    ``qk_scale = scale * log2(e)``; ``LSE`` is a contiguous float32 ``[B, Hq, Sq]``.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Sq
    d_ok = offs_d < D

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    if CAUSAL:
        hi = tl.maximum(tl.minimum(m0 + BLOCK_M + off, Sk), 0)  # keys past hi are hidden from every row
        full = tl.maximum(tl.minimum(m0 + off + 1, Sk), 0)  # keys below are seen by every row
    else:
        hi = Sk
        full = Sk
    full = (full // BLOCK_N) * BLOCK_N

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                    offs_m, offs_d, 0, full, Sk, D, off, qk_scale,
                                    BLOCK_M, BLOCK_N, False, CAUSAL, EVEN_D, PREC, UPCAST)
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                    offs_m, offs_d, full, hi, Sk, D, off, qk_scale,
                                    BLOCK_M, BLOCK_N, True, CAUSAL, EVEN_D, PREC, UPCAST)

    l_div = tl.where(l_i == 0.0, 1.0, l_i)  # a row that saw no key: acc = 0 -> out = 0
    out = acc / l_div[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_div)) * LN2_K)  # ATT-4: no key -> -inf
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * Sq + offs_m, lse, mask=m_ok)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: str | None, scale: float,
                      config: LaunchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of validated inputs (any strides); ``causal`` a variant name or None."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((B, Hq, Sq), torch.float32, q.device)
    grid = (triton.cdiv(Sq, config.block_m), B * Hq)
    bd = block_d(D)
    attention_forward_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        Hq, Hq // Hk, Sq, Sk, D, causal_offset(causal, Sq, Sk), scale * LOG2E,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=bd,
        CAUSAL=causal is not None, EVEN_D=bd == D, PREC=dot_precision(q.dtype), UPCAST=upcast_dots(q.device),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, lse
