"""Attention forward: one program per (query block, batch*head), online softmax over key blocks.

For query row i and visible keys j (SPEC ATT-1..ATT-3):

    s_ij = scale * q_i . k_j                     (kept in base 2: s_ij * log2(e))
    m_i  = max_j s_ij,  l_i = sum_j exp(s_ij - m_i)
    out_i = sum_j exp(s_ij - m_i) v_j / l_i,   lse_i = m_i + log(l_i)   (natural log, float32)

computed block by block: a new key block with row maximum ``m'`` rescales the running sum and the
accumulator by ``exp(m - m')`` (FlashAttention's online softmax). Key j is visible to query i iff ``j < Sk``
and it lies in the band of the causal rule and the sliding window (:mod:`.variants`); a softcap and ALiBi
change the logits before the softmax.

Key blocks are split in three loops: the blocks at the band's left edge run masked, blocks every row of the
query block sees completely run without masks, the blocks on the causal diagonal / right window edge and the
ragged end of the keys run masked. Key blocks no row sees are skipped. A row that sees no key (ATT-4) keeps
``m = -inf, l = 0`` and gets ``out = 0, lse = -inf``: the masked loop exponentiates against 0 instead of
``-inf`` so no ``-inf - -inf`` appears. The same kernel serves packed variable-length sequences (``VARLEN``:
one program per query block of one sequence, :mod:`.varlen`) and e4m3 inputs with descales (``FP8``).
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
from .variants import KernelVariants, band, key_blocks, locate, logits, visible

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
                    offs_m, offs_d, lo, hi, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_LO: tl.constexpr,
                    HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, FP8: tl.constexpr,
                    EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
                    FOLD_SCALE: tl.constexpr):
    """Fold key blocks ``[lo, hi)`` into ``(acc, l_i, m_i)``; ``MASKED`` applies ``j < Sk`` and the band.

    ``FP8``: both products take float16 copies of the e4m3 tiles (exact: e4m3's 3 mantissa bits and range
    +-448 fit float16; faster than bfloat16 copies) and ``P`` in float16 (rounded to e4m3 it would keep 3
    bits). The float16 MMA accumulates in float32; Hopper's fp8 MMA adds its products with fewer bits, which
    fails SPEC FP8-1 even when promoted to float32 every 32 products, so e4m3 is the storage format, not the
    product's (the H200 figures: reports/gpu/README.md).
    """
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k = row_tile(k_src, start_n, offs_d, stride_kn, stride_kd, Sk, D, BLOCK_N, MASKED, EVEN_D, TMA)
        v = row_tile(v_src, start_n, offs_d, stride_vn, stride_vd, Sk, D, BLOCK_N, MASKED, EVEN_D, TMA)
        if FP8:  # e4m3 values are exact in float16 (see the docstring)
            k = k.to(tl.float16)
            v = v.to(tl.float16)
        s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PREC, UPCAST)
        if MASKED or SOFTCAP or ALIBI:
            offs_n = start_n + offs_n0
            s, dcap = logits(s, offs_m, offs_n, shift, qk_scale, cap_in, cap_out, slope2, SOFTCAP, ALIBI)
            if MASKED:
                s = tl.where(visible(offs_m, offs_n, Sk, lo_off, hi_off, HAS_LO, HAS_HI), s, float("-inf"))
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
def _forward_band(q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, m0, offs_m, offs_d, Sq, Sk, D,
                  lo_off, hi_off, qk_scale, cap_in, cap_out, slope2,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_LO: tl.constexpr,
                  HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, FP8: tl.constexpr,
                  EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
                  FOLD_SCALE: tl.constexpr):
    """``(acc, l, m)`` of the query rows ``[m0, m0 + BLOCK_M)`` over the key blocks the band leaves them:
    the masked left edge, the unmasked middle, the masked right edge (:func:`~.variants.key_blocks`). A query
    block past the end of its sequence (varlen) visits no key."""
    a, b_masked, b, c, d = key_blocks(m0, tl.where(m0 < Sq, Sk, 0), lo_off, hi_off,
                                      BLOCK_M, BLOCK_N, HAS_LO, HAS_HI)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    shift = Sk - Sq
    acc, l_i, m_i = _forward_blocks(
        acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_d,
        a, b_masked, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2, BLOCK_M, BLOCK_N,
        True, HAS_LO, HAS_HI, SOFTCAP, ALIBI, FP8, EVEN_D, PREC, UPCAST, TMA, FOLD_SCALE)
    acc, l_i, m_i = _forward_blocks(
        acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_d,
        b, c, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2, BLOCK_M, BLOCK_N,
        False, HAS_LO, HAS_HI, SOFTCAP, ALIBI, FP8, EVEN_D, PREC, UPCAST, TMA, FOLD_SCALE)
    acc, l_i, m_i = _forward_blocks(
        acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_d,
        c, d, Sk, D, shift, lo_off, hi_off, qk_scale, cap_in, cap_out, slope2, BLOCK_M, BLOCK_N,
        True, HAS_LO, HAS_HI, SOFTCAP, ALIBI, FP8, EVEN_D, PREC, UPCAST, TMA, FOLD_SCALE)
    return acc, l_i, m_i


@triton.jit
def _store_rows(acc, l_i, m_i, o_base, lse_base, stride_om, stride_od, offs_m, offs_d, Sq, D, out_scale):
    """Write ``out = out_scale * acc / l`` and ``lse = (m + log2 l) ln 2``; rows that saw no key (ATT-4) get
    ``out = 0, lse = -inf``."""
    l_div = tl.where(l_i == 0.0, 1.0, l_i)  # a row that saw no key: acc = 0 -> out = 0
    out = acc / l_div[:, None] * out_scale  # exact for out_scale = 1
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_div)) * LN2_K)
    m_ok = offs_m < Sq
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(o_base.dtype.element_ty), mask=m_ok[:, None] & (offs_d < D)[None, :])
    tl.store(lse_base + offs_m, lse, mask=m_ok)


@triton.jit
def _query_and_sources(q_base, k_base, v_base, stride_qm, stride_qd, stride_kn, stride_vn,
                       m0, offs_m, offs_d, Sq, Sk, D,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr):
    """The query tile and where K and V tiles come from: tensor descriptors of the head (``TMA``) or pointers."""
    if TMA:
        q = tl.make_tensor_descriptor(q_base, shape=[Sq, D], strides=[stride_qm, 1],
                                      block_shape=[BLOCK_M, BLOCK_D]).load([m0, 0])
    else:
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=(offs_m < Sq)[:, None] & (offs_d < D)[None, :], other=0.0)
    k_src, v_src = tile_sources(k_base, v_base, stride_kn, stride_vn, Sk, D, BLOCK_N, BLOCK_D, TMA)
    return q, k_src, v_src


@triton.jit
def attention_forward_kernel(
    Q, K, V, O, LSE, SLOPES, CU_Q, CU_K, DESCALE,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od, stride_lb, stride_lh,
    Hq, GROUP, Sq, Sk, D, qk_scale, cap_in, cap_out, win_left, win_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WIN_LO: tl.constexpr, WIN_HI: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, VARLEN: tl.constexpr, FP8: tl.constexpr,
    EVEN_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr, FOLD_SCALE: tl.constexpr,
):
    """Grid ``(cdiv(Sq, BLOCK_M), B*Hq)`` (varlen: ``(cdiv(max_seqlen_q, BLOCK_M), num_seqs*Hq)``); query
    blocks are taken last-first (causal: longest first).

    ``qk_scale = scale * log2(e)``; ``LSE`` float32 with strides ``(stride_lb, stride_lh, 1)``. ``VARLEN``: the
    program's sequence starts at ``CU_Q[seq]`` / ``CU_K[seq]`` along the row strides (batch strides are 0).
    ``FP8``: ``DESCALE`` holds the q, k, v descales. ``TMA``: Q, K and V tiles through tensor descriptors.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq, h, hk, q_start, k_start, Sq, Sk = locate(tl.program_id(1), Hq, GROUP, Sq, Sk, CU_Q, CU_K, VARLEN)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q, k_src, v_src = _query_and_sources(
        Q + seq * stride_qb + h * stride_qh + q_start * stride_qm, K + seq * stride_kb + hk * stride_kh
        + k_start * stride_kn, V + seq * stride_vb + hk * stride_vh + k_start * stride_vn,
        stride_qm, stride_qd, stride_kn, stride_vn, m0, offs_m, offs_d, Sq, Sk, D, BLOCK_M, BLOCK_N, BLOCK_D, TMA)
    out_scale = 1.0
    if FP8:
        q = q.to(tl.float16)
        qk_scale = qk_scale * tl.load(DESCALE) * tl.load(DESCALE + 1)
        out_scale = tl.load(DESCALE + 2)
    slope2 = tl.load(SLOPES + h) * LOG2E_K if ALIBI else 0.0
    lo_off, hi_off = band(Sq, Sk, win_left, win_right, CAUSAL, BOTTOM_RIGHT, WIN_LO, WIN_HI)
    acc, l_i, m_i = _forward_band(
        q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, m0, offs_m, offs_d, Sq, Sk, D,
        lo_off, hi_off, qk_scale, cap_in, cap_out, slope2, BLOCK_M, BLOCK_N, BLOCK_D, WIN_LO, CAUSAL or WIN_HI,
        SOFTCAP, ALIBI, FP8, EVEN_D, PREC, UPCAST, TMA, FOLD_SCALE)
    _store_rows(acc, l_i, m_i, O + seq * stride_ob + h * stride_oh + q_start * stride_om,
                LSE + seq * stride_lb + h * stride_lh + q_start, stride_om, stride_od, offs_m, offs_d, Sq, D,
                out_scale)


def launch_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   variants: KernelVariants, scale: float, config: LaunchConfig, *,
                   cu_seqlens: tuple[torch.Tensor, torch.Tensor, int, int] | None = None,
                   descale: torch.Tensor | None = None) -> None:
    """Run the forward kernel on ``[B, H, S, D]`` views (``lse`` ``[B, Hq, S]``, unit last stride).

    ``cu_seqlens = (cu_q, cu_k, max_seqlen_q, max_seqlen_k)``: the views hold one packed batch entry
    (``B = 1``) cut into sequences. ``descale``: float32 ``[3]`` (q, k, v) for e4m3 inputs.
    """
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    varlen = cu_seqlens is not None
    cu_q, cu_k, Sq, Sk = cu_seqlens if varlen else (lse, lse, Sq, Sk)  # lse: a pointer the kernel never reads
    programs = cu_q.numel() - 1 if varlen else B
    tma = config.tma and not varlen and tma_eligible(q, k, v)
    if tma:
        provide_descriptor_memory(q.device)
    bd = block_d(D)
    attention_forward_kernel[(triton.cdiv(Sq, config.block_m), programs * Hq)](
        q, k, v, out, lse, variants.slopes(q.device), cu_q, cu_k, lse if descale is None else descale,
        *launch_strides(q, varlen), *launch_strides(k, varlen), *launch_strides(v, varlen),
        *launch_strides(out, varlen), *launch_strides(lse, varlen)[:2],
        Hq, Hq // Hk, Sq, Sk, D, scale * LOG2E, *variants.scalars(scale),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=bd, **variants.flags(), VARLEN=varlen,
        FP8=descale is not None, EVEN_D=bd == D, PREC=dot_precision(q.dtype), UPCAST=upcast_dots(q.device),
        TMA=tma, FOLD_SCALE=scale > 0, num_warps=config.num_warps, num_stages=config.num_stages,
    )


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: str | None, scale: float,
                      config: LaunchConfig, *, window: tuple[int, int] | None = None, softcap: float | None = None,
                      alibi_slopes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of validated ``[B, H, S, D]`` inputs (any strides); ``causal`` a variant name or None;
    ``window``, ``softcap``, ``alibi_slopes`` as in SPEC's variant clauses."""
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output(q.shape[:3], torch.float32, q.device)
    launch_forward(q, k, v, out, lse, KernelVariants(causal, window, softcap, alibi_slopes), scale, config)
    return out, lse


def attention_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, descales: tuple[torch.Tensor, ...],
                  causal: str | None, scale: float, config: LaunchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out bfloat16, lse float32)`` of e4m3 ``[B, H, S, D]`` inputs with 0-dim float32 ``descales`` (q, k,
    v): the attention of the dequantized inputs ``descale * x``, the q and k descales folded into the logit
    scale and the v descale into the output."""
    out = new_output(q.shape, torch.bfloat16, q.device)
    lse = new_output(q.shape[:3], torch.float32, q.device)
    descale = torch.stack([d.reshape(()) for d in descales]).to(device=q.device, dtype=torch.float32)
    launch_forward(q, k, v, out, lse, KernelVariants(causal), scale, config, descale=descale)
    return out, lse
