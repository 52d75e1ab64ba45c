"""Attention backward by recomputation from ``lse`` (SPEC GRAD-1..GRAD-6).

With ``P_ij = exp(scale * q_i . k_j - lse_i)`` (zero where key j is hidden from query i) and ``dO``:

    delta_i = sum_d dO_id * O_id                 (= sum_j P_ij dP_ij, GRAD-3)
    dV_j = sum_i P_ij dO_i,   dP_ij = dO_i . v_j,   dS_ij = P_ij (dP_ij - delta_i)
    dK_j = scale * sum_i dS_ij q_i,   dQ_i = scale * sum_j dS_ij k_j

Three kernels, none storing an ``Sq x Sk`` tensor: ``delta``; ``dK, dV`` with one program per (key block,
batch*KV head) looping over the query blocks of every query head of its group (GQA sums in registers,
GRAD-4: no atomics, so results are bit-reproducible, GRAD-6); ``dQ`` with one program per (query block,
batch*query head) looping over key blocks. ``P`` is recomputed as ``exp2(s*log2(e) - lse*log2(e))``. A row
with ``lse = -inf`` (no visible key) is masked everywhere it appears, so it contributes nothing and gets
``dQ = 0`` (GRAD-5). With a softcap ``dS`` is multiplied by the tanh derivative ``1 - tanh^2`` (the logits
are ``cap * tanh(s / cap)``); ALiBi and the window change ``P`` only. Block ranges, masking and the two
ways of loading the streamed tiles (pointers or tensor descriptors) follow the forward (``attention_fwd``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import (
    LOG2E,
    LOG2E_K,
    LaunchConfig,
    block_d,
    dot_precision,
    fit_stages,
    has_tensor_descriptors,
    launch_strides,
    mma,
    provide_descriptor_memory,
    row_tile,
    tile_sources,
    tma_eligible,
    upcast_dots,
)
from .variants import KernelVariants, band, key_blocks, locate, logits, query_blocks, visible, visible_t


@dataclass(frozen=True)
class BackwardConfig:
    """Launch configs of the two gradient kernels (``block_m`` = query block, ``block_n`` = key block)."""

    dkdv: LaunchConfig
    dq: LaunchConfig


#: GPU configs by head-dim tile, used as listed; streamed tiles go through tensor descriptors where the device
#: and the inputs allow (see NOTES.md for the measurements behind them); D=256 keeps its unmeasured small tiles
GPU_BACKWARD_16BIT: dict[int, BackwardConfig] = {
    16: BackwardConfig(LaunchConfig(32, 128, 4, 4, tma=True), LaunchConfig(128, 64, 4, 3, tma=True)),
    32: BackwardConfig(LaunchConfig(32, 128, 4, 4, tma=True), LaunchConfig(128, 64, 4, 3, tma=True)),
    64: BackwardConfig(LaunchConfig(32, 128, 4, 4, tma=True), LaunchConfig(128, 64, 4, 3, tma=True)),
    128: BackwardConfig(LaunchConfig(64, 128, 8, 3, tma=True), LaunchConfig(128, 64, 8, 3, tma=True)),
    256: BackwardConfig(LaunchConfig(32, 64, 8, 1), LaunchConfig(64, 32, 8, 1)),
}
#: float32: exact FMA products, small tiles (see GPU_FORWARD_FP32)
GPU_BACKWARD_FP32 = BackwardConfig(LaunchConfig(16, 16, 4, 1), LaunchConfig(16, 16, 4, 1))
INTERPRETER_BACKWARD = BackwardConfig(LaunchConfig(64, 64, 4, 1), LaunchConfig(64, 64, 4, 1))
DELTA_BLOCK_M = 64


def backward_config(head_dim: int, dtype: torch.dtype, device: torch.device,
                    tiles: tuple[int, int] | None = None) -> BackwardConfig:
    """Configs for these inputs; ``tiles=(block_m, block_n)`` sets both kernels' query and key blocks, with stages
    lowered until they fit."""
    if device.type == "cpu":
        base = INTERPRETER_BACKWARD
    elif dtype == torch.float32:
        base = GPU_BACKWARD_FP32
    else:
        base = GPU_BACKWARD_16BIT[block_d(head_dim)]
        if not has_tensor_descriptors(device):
            base = BackwardConfig(replace(base.dkdv, tma=False), replace(base.dq, tma=False))
    if tiles is None:
        return base
    warps = 8 if max(tiles) >= 128 else 4
    row = block_d(head_dim) * dtype.itemsize
    return BackwardConfig(
        fit_stages(replace(base.dkdv, block_m=tiles[0], block_n=tiles[1], num_warps=warps),
                   streamed=2 * tiles[0] * row, resident=2 * tiles[1] * row),
        fit_stages(replace(base.dq, block_m=tiles[0], block_n=tiles[1], num_warps=warps),
                   streamed=2 * tiles[1] * row, resident=2 * tiles[0] * row),
    )


@triton.jit
def attention_delta_kernel(O, DO, DELTA,
                           stride_ob, stride_oh, stride_om, stride_od,
                           stride_db, stride_dh, stride_dm, stride_dd,
                           Hq, Sq, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """``DELTA[bh, i] = sum_d DO[b,h,i,d] * O[b,h,i,d]`` in float32; grid ``(cdiv(Sq, BLOCK_M), B*Hq)``."""
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = (bh % Hq).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Sq)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * Sq + offs_m, delta, mask=offs_m < Sq)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_src, do_src, lse_base, delta_base,
                 stride_qm, stride_qd, stride_dm, stride_dd,
                 offs_n, offs_d, lo, hi, Sq, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LO: tl.constexpr,
                 HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                 EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """Add query blocks ``[lo, hi)`` of one head to ``dk, dv`` (transposed: rows are keys); with a softcap
    ``dS`` carries the tanh derivative."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = row_tile(q_src, start_m, offs_d, stride_qm, stride_qd, Sq, D, BLOCK_M, MASKED, EVEN_D, TMA)
        do = row_tile(do_src, start_m, offs_d, stride_dm, stride_dd, Sq, D, BLOCK_M, MASKED, EVEN_D, TMA)
        if MASKED:
            m_ok = offs_m < Sq
            lse2 = tl.load(lse_base + offs_m, mask=m_ok, other=0.0) * LOG2E_K
            delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        else:
            lse2 = tl.load(lse_base + offs_m) * LOG2E_K
            delta = tl.load(delta_base + offs_m)
        st = mma(k, tl.trans(q), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), PREC, UPCAST)
        st, dcap = logits(st, offs_n, offs_m, -shift, qk_scale, cap_in, cap_out, slope2, SOFTCAP, ALIBI)
        pt = tl.exp2(st - lse2[None, :])
        if MASKED:
            pt = tl.where(visible_t(offs_n, offs_m, Sq, lo_off, hi_off, HAS_LO, HAS_HI), pt, 0.0)
        dv = mma(pt.to(do.dtype), do, dv, PREC, UPCAST)
        dpt = mma(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], tl.float32), PREC, UPCAST)
        dst = pt * (dpt - delta[None, :])
        if SOFTCAP:
            dst = dst * dcap
        dk = mma(dst.to(q.dtype), q, dk, PREC, UPCAST)
    return dk, dv


@triton.jit
def _dkdv_head(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_qd, stride_dm, stride_dd,
               n0, offs_n, offs_d, Sq, Sk, D, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_LO: tl.constexpr,
               HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
               EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """Add one query head's contribution to the key block at ``n0``: the masked query blocks at the band's
    edges, the unmasked middle (:func:`~.variants.query_blocks`); a key block past ``Sk`` visits none."""
    q_src, do_src = tile_sources(q_base, do_base, stride_qm, stride_dm, Sq, D, BLOCK_M, BLOCK_D, TMA)
    a, b_masked, b, c, d = query_blocks(n0, tl.where(n0 < Sk, Sq, 0), lo_off, hi_off,
                                        BLOCK_M, BLOCK_N, HAS_LO, HAS_HI)
    shift = Sk - Sq
    dk, dv = _dkdv_blocks(dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qm, stride_qd, stride_dm,
                          stride_dd, offs_n, offs_d, a, b_masked, Sq, D, shift, lo_off, hi_off, qk_scale, cap_in,
                          cap_out, slope2, BLOCK_M, BLOCK_N, True, HAS_LO, HAS_HI, SOFTCAP, ALIBI,
                          EVEN_D, PREC, UPCAST, TMA)
    dk, dv = _dkdv_blocks(dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qm, stride_qd, stride_dm,
                          stride_dd, offs_n, offs_d, b, c, Sq, D, shift, lo_off, hi_off, qk_scale, cap_in,
                          cap_out, slope2, BLOCK_M, BLOCK_N, False, HAS_LO, HAS_HI, SOFTCAP, ALIBI,
                          EVEN_D, PREC, UPCAST, TMA)
    dk, dv = _dkdv_blocks(dk, dv, k, v, q_src, do_src, lse_base, delta_base, stride_qm, stride_qd, stride_dm,
                          stride_dd, offs_n, offs_d, c, d, Sq, D, shift, lo_off, hi_off, qk_scale, cap_in,
                          cap_out, slope2, BLOCK_M, BLOCK_N, True, HAS_LO, HAS_HI, SOFTCAP, ALIBI,
                          EVEN_D, PREC, UPCAST, TMA)
    return dk, dv


@triton.jit
def attention_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, SLOPES, CU_Q, CU_K,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd, stride_lb, stride_lh,
    Hk, GROUP, Sq, Sk, D, qk_scale, scale, cap_in, cap_out, win_left, win_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WIN_LO: tl.constexpr, WIN_HI: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, VARLEN: tl.constexpr,
    EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
):
    """Grid ``(cdiv(Sk, BLOCK_N), B*Hk)`` (varlen: ``(cdiv(max_seqlen_k, BLOCK_N), num_seqs*Hk)``); ``LSE``,
    ``DELTA`` float32 with strides ``(stride_lb, stride_lh, 1)``. ``TMA``: the streamed Q and dO tiles come
    through tensor descriptors of each query head."""
    seq, hk, _, q_start, k_start, Sq, Sk = locate(tl.program_id(1), Hk, 1, Sq, Sk, CU_Q, CU_K, VARLEN)
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n < Sk)[:, None] & (offs_d < D)[None, :]
    k_rows = offs_n[:, None] + k_start
    k = tl.load(K + seq * stride_kb + hk * stride_kh + k_rows * stride_kn + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + seq * stride_vb + hk * stride_vh + k_rows * stride_vn + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)
    lo_off, hi_off = band(Sq, Sk, win_left, win_right, CAUSAL, BOTTOM_RIGHT, WIN_LO, WIN_HI)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        slope2 = tl.load(SLOPES + h) * LOG2E_K if ALIBI else 0.0
        row = seq * stride_lb + h * stride_lh + q_start
        dk, dv = _dkdv_head(
            dk, dv, k, v, Q + seq * stride_qb + h * stride_qh + q_start * stride_qm,
            DO + seq * stride_db + h * stride_dh + q_start * stride_dm, LSE + row, DELTA + row,
            stride_qm, stride_qd, stride_dm, stride_dd, n0, offs_n, offs_d, Sq, Sk, D, lo_off, hi_off,
            qk_scale, cap_in, cap_out, slope2, BLOCK_M, BLOCK_N, BLOCK_D, WIN_LO, CAUSAL or WIN_HI, SOFTCAP, ALIBI,
            EVEN_D, PREC, UPCAST, TMA)
    tl.store(DK + seq * stride_dkb + hk * stride_dkh + k_rows * stride_dkn + offs_d[None, :] * stride_dkd,
             (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + seq * stride_dvb + hk * stride_dvh + k_rows * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_blocks(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
               offs_m, offs_d, lo, hi, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LO: tl.constexpr,
               HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
               EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """Add key blocks ``[lo, hi)`` to ``dq`` (unscaled); with a softcap ``dS`` carries the tanh derivative."""
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k = row_tile(k_src, start_n, offs_d, stride_kn, stride_kd, Sk, D, BLOCK_N, MASKED, EVEN_D, TMA)
        v = row_tile(v_src, start_n, offs_d, stride_vn, stride_vd, Sk, D, BLOCK_N, MASKED, EVEN_D, TMA)
        s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PREC, UPCAST)
        s, dcap = logits(s, offs_m, offs_n, shift, qk_scale, cap_in, cap_out, slope2, SOFTCAP, ALIBI)
        p = tl.exp2(s - lse2[:, None])
        if MASKED:
            p = tl.where(visible(offs_m, offs_n, Sk, lo_off, hi_off, HAS_LO, HAS_HI), p, 0.0)
        dp = mma(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * dcap
        dq = mma(ds.to(k.dtype), k, dq, PREC, UPCAST)
    return dq


@triton.jit
def _dq_band(q, do, lse2, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, m0, offs_m, offs_d,
             Sq, Sk, D, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_LO: tl.constexpr,
             HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
             EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """``dq`` (unscaled) of the query rows at ``m0`` over the key blocks of the band, as the forward visits them."""
    a, b_masked, b, c, d = key_blocks(m0, tl.where(m0 < Sq, Sk, 0), lo_off, hi_off,
                                      BLOCK_M, BLOCK_N, HAS_LO, HAS_HI)
    shift = Sk - Sq
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_blocks(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, a, b_masked, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
                    BLOCK_M, BLOCK_N, True, HAS_LO, HAS_HI, SOFTCAP, ALIBI, EVEN_D, PREC, UPCAST, TMA)
    dq = _dq_blocks(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, b, c, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
                    BLOCK_M, BLOCK_N, False, HAS_LO, HAS_HI, SOFTCAP, ALIBI, EVEN_D, PREC, UPCAST, TMA)
    dq = _dq_blocks(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, c, d, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
                    BLOCK_M, BLOCK_N, True, HAS_LO, HAS_HI, SOFTCAP, ALIBI, EVEN_D, PREC, UPCAST, TMA)
    return dq


@triton.jit
def attention_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, SLOPES, CU_Q, CU_K,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd, stride_lb, stride_lh,
    Hq, GROUP, Sq, Sk, D, qk_scale, scale, cap_in, cap_out, win_left, win_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WIN_LO: tl.constexpr, WIN_HI: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, VARLEN: tl.constexpr,
    EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
):
    """Grid ``(cdiv(Sq, BLOCK_M), B*Hq)`` (varlen: per sequence as the forward), query blocks last-first.

    ``TMA``: the streamed K and V tiles come through tensor descriptors of the KV head.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq, h, hk, q_start, k_start, Sq, Sk = locate(tl.program_id(1), Hq, GROUP, Sq, Sk, CU_Q, CU_K, VARLEN)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Sq
    mask = m_ok[:, None] & (offs_d < D)[None, :]
    q_rows = offs_m[:, None] + q_start
    q = tl.load(Q + seq * stride_qb + h * stride_qh + q_rows * stride_qm + offs_d[None, :] * stride_qd,
                mask=mask, other=0.0)
    do = tl.load(DO + seq * stride_db + h * stride_dh + q_rows * stride_dm + offs_d[None, :] * stride_dd,
                 mask=mask, other=0.0)
    row = seq * stride_lb + h * stride_lh + q_start + offs_m
    lse2 = tl.load(LSE + row, mask=m_ok, other=0.0) * LOG2E_K
    delta = tl.load(DELTA + row, mask=m_ok, other=0.0)
    k_src, v_src = tile_sources(K + seq * stride_kb + hk * stride_kh + k_start * stride_kn,
                               V + seq * stride_vb + hk * stride_vh + k_start * stride_vn,
                               stride_kn, stride_vn, Sk, D, BLOCK_N, BLOCK_D, TMA)
    slope2 = tl.load(SLOPES + h) * LOG2E_K if ALIBI else 0.0
    lo_off, hi_off = band(Sq, Sk, win_left, win_right, CAUSAL, BOTTOM_RIGHT, WIN_LO, WIN_HI)
    dq = _dq_band(q, do, lse2, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, m0, offs_m,
                  offs_d, Sq, Sk, D, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2, BLOCK_M, BLOCK_N, BLOCK_D,
                  WIN_LO, CAUSAL or WIN_HI, SOFTCAP, ALIBI, EVEN_D, PREC, UPCAST, TMA)
    tl.store(DQ + seq * stride_dqb + h * stride_dqh + q_rows * stride_dqm + offs_d[None, :] * stride_dqd,
             (dq * scale).to(DQ.dtype.element_ty), mask=mask)


def attention_delta(out: torch.Tensor, dout: torch.Tensor, *, into: torch.Tensor | None = None) -> torch.Tensor:
    """``delta = rowsum(dout * out)``, float32 ``[B, Hq, Sq]`` (GRAD-3); ``into`` a contiguous buffer for it."""
    B, Hq, Sq, D = out.shape
    delta = new_output((B, Hq, Sq), torch.float32, out.device) if into is None else into
    attention_delta_kernel[(triton.cdiv(Sq, DELTA_BLOCK_M), B * Hq)](
        out, dout, delta, *out.stride(), *dout.stride(), Hq, Sq, D,
        BLOCK_M=DELTA_BLOCK_M, BLOCK_D=block_d(D), num_warps=4,
    )
    return delta


def launch_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                    dout: torch.Tensor, grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    variants: KernelVariants, scale: float, config: BackwardConfig, *,
                    cu_seqlens: tuple[torch.Tensor, torch.Tensor, int, int] | None = None) -> None:
    """Fill ``grads = (dq, dk, dv)`` from ``[B, H, S, D]`` views (``lse`` contiguous ``[B, Hq, S]``);
    ``cu_seqlens = (cu_q, cu_k, max_seqlen_q, max_seqlen_k)`` for packed sequences (``B = 1``)."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    dq, dk, dv = grads
    delta = attention_delta(out, dout, into=torch.empty_like(lse))
    varlen = cu_seqlens is not None
    cu_q, cu_k, Sq, Sk = cu_seqlens if varlen else (lse, lse, Sq, Sk)  # lse: a pointer the kernels never read
    programs = cu_q.numel() - 1 if varlen else B
    bd = block_d(D)
    common = (scale * LOG2E, scale, *variants.scalars(scale))
    flags = dict(BLOCK_D=bd, **variants.flags(), VARLEN=varlen, EVEN_D=bd == D, PREC=dot_precision(q.dtype),
                 UPCAST=upcast_dots(q.device))
    slopes = variants.slopes(q.device)
    cfg = config.dkdv
    tma = cfg.tma and not varlen and tma_eligible(q, dout)
    if tma:
        provide_descriptor_memory(q.device)
    attention_dkdv_kernel[(triton.cdiv(Sk, cfg.block_n), programs * Hk)](
        q, k, v, dout, lse, delta, dk, dv, slopes, cu_q, cu_k,
        *(st for t in (q, k, v, dout, dk, dv) for st in launch_strides(t, varlen)), *launch_strides(lse, varlen)[:2],
        Hk, Hq // Hk, Sq, Sk, D, *common, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TMA=tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags,
    )
    cfg = config.dq
    tma = cfg.tma and not varlen and tma_eligible(k, v)
    if tma:
        provide_descriptor_memory(q.device)
    attention_dq_kernel[(triton.cdiv(Sq, cfg.block_m), programs * Hq)](
        q, k, v, dout, lse, delta, dq, slopes, cu_q, cu_k,
        *(st for t in (q, k, v, dout, dq) for st in launch_strides(t, varlen)), *launch_strides(lse, varlen)[:2],
        Hq, Hq // Hk, Sq, Sk, D, *common, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TMA=tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **flags,
    )


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       dout: torch.Tensor, causal: str | None, scale: float, config: BackwardConfig, *,
                       window: tuple[int, int] | None = None, softcap: float | None = None,
                       alibi_slopes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of validated ``[B, H, S, D]`` inputs (any strides); ``causal`` a variant name or None;
    ``window``, ``softcap``, ``alibi_slopes`` as in the forward."""
    grads = (new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device),
             new_output(v.shape, v.dtype, v.device))
    variants = KernelVariants(causal, window, softcap, alibi_slopes)
    launch_backward(q, k, v, out, lse.contiguous(), dout, grads, variants, scale, config)
    return grads
