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

Tiles are loaded through pointers or, where a config asks for it (``LaunchConfig.tma``) and the inputs allow
(:func:`~.common.tma_eligible`), through tensor descriptors made in the kernel for each head: Hopper's copy
engine moves the tiles to shared memory and fills rows and columns outside the head with zeros, so the
descriptor path computes no load masks.
"""

from __future__ import annotations

from dataclasses import replace

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import (
    LN2_K,
    LOG2E,
    LaunchConfig,
    block_d,
    dot_precision,
    fit_stages,
    has_tensor_descriptors,
    mma,
    provide_descriptor_memory,
    row_tile,
    tma_eligible,
    upcast_dots,
)

#: GPU configs for 16-bit inputs by head-dim tile, used as listed. D=128 streams K and V through tensor
#: descriptors in 128-key blocks, three stages deep (225 KiB of shared memory); at D=64 the pointer loads of
#: 64-key blocks measured as fast or faster on the H200 (see NOTES.md); D=256 keeps its unmeasured one-stage tile
GPU_FORWARD_16BIT: dict[int, LaunchConfig] = {
    16: LaunchConfig(128, 64, 8, 3),
    32: LaunchConfig(128, 64, 8, 3),
    64: LaunchConfig(128, 64, 8, 3),
    128: LaunchConfig(128, 128, 8, 3, tma=True),
    256: LaunchConfig(128, 64, 8, 1),
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
    """The launch config for these inputs; ``tiles`` overrides the tile, with stages lowered until it fits."""
    if device.type == "cpu":
        base = INTERPRETER_TILE
    elif dtype == torch.float32:
        base = GPU_FORWARD_FP32
    else:
        base = GPU_FORWARD_16BIT[block_d(head_dim)]
        if not has_tensor_descriptors(device):
            base = replace(base, tma=False)
    if tiles is None:
        return base
    row = block_d(head_dim) * dtype.itemsize
    tiled = replace(base, block_m=tiles[0], block_n=tiles[1], num_warps=8 if tiles[0] >= 128 else 4)
    return fit_stages(tiled, streamed=2 * tiles[1] * row, resident=tiles[0] * row)


@triton.jit
def _softmax_step(s, m_i, qk_scale, FOLD_SCALE: tl.constexpr):
    """``(p, alpha, m_new)`` for a block of raw products ``s = q . k`` that every row sees completely.

    ``FOLD_SCALE`` (``qk_scale > 0``): the row maximum is taken on the raw products and the scale enters the
    exponent as one fused multiply-add, ``exp2(s * qk_scale - m)``, instead of a separate multiply of the whole
    tile; a positive scale keeps the maximum where it was.
    """
    if FOLD_SCALE:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    else:
        s = s * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    return p, tl.exp2(m_i - m_new), m_new


@triton.jit
def _forward_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, lo, hi, Sk, D, off, qk_scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                    EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
                    FOLD_SCALE: tl.constexpr):
    """Fold key blocks ``[lo, hi)`` into ``(acc, l_i, m_i)``; ``MASKED`` applies ``j < Sk`` and causality."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k = row_tile(k_src, start_n, offs_d, stride_kn, stride_kd, Sk, D, BLOCK_N, MASKED, EVEN_D, TMA)
        v = row_tile(v_src, start_n, offs_d, stride_vn, stride_vd, Sk, D, BLOCK_N, MASKED, EVEN_D, TMA)
        s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PREC, UPCAST)
        if MASKED:
            s = s * qk_scale
            offs_n = start_n + offs_n0
            visible = offs_n[None, :] < Sk
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + off)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
            p = tl.exp2(s - m_ref[:, None])
            alpha = tl.exp2(m_i - m_ref)
        else:
            p, alpha, m_new = _softmax_step(s, m_i, qk_scale, FOLD_SCALE)
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
    TMA: tl.constexpr, FOLD_SCALE: tl.constexpr,
):
    """Grid ``(cdiv(Sq, BLOCK_M), B*Hq)``; query blocks are taken last-first (causal: longest first).

    ``qk_scale = scale * log2(e)``; ``LSE`` is a contiguous float32 ``[B, Hq, Sq]``. ``TMA``: Q, K and V tiles
    come through tensor descriptors of each head (the copy engine; needs unit stride along D and 16-byte
    aligned rows, checked by :func:`tma_eligible`).
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

    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    if TMA:
        q = tl.make_tensor_descriptor(q_base, shape=[Sq, D], strides=[stride_qm, 1],
                                      block_shape=[BLOCK_M, BLOCK_D]).load([m0, 0])
        k_src = tl.make_tensor_descriptor(k_base, shape=[Sk, D], strides=[stride_kn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_base, shape=[Sk, D], strides=[stride_vn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
    else:
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        k_src = k_base
        v_src = v_base

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
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                                    offs_m, offs_d, 0, full, Sk, D, off, qk_scale,
                                    BLOCK_M, BLOCK_N, False, CAUSAL, EVEN_D, PREC, UPCAST, TMA, FOLD_SCALE)
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                                    offs_m, offs_d, full, hi, Sk, D, off, qk_scale,
                                    BLOCK_M, BLOCK_N, True, CAUSAL, EVEN_D, PREC, UPCAST, TMA, FOLD_SCALE)

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
    tma = config.tma and tma_eligible(q, k, v)
    if tma:
        provide_descriptor_memory(q.device)
    attention_forward_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        Hq, Hq // Hk, Sq, Sk, D, causal_offset(causal, Sq, Sk), scale * LOG2E,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=bd,
        CAUSAL=causal is not None, EVEN_D=bd == D, PREC=dot_precision(q.dtype), UPCAST=upcast_dots(q.device),
        TMA=tma, FOLD_SCALE=scale > 0,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, lse
