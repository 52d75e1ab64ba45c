"""The CuPy attention forward launcher (``attention_fwd.cu: attn_fwd``): dense, sliding-window and packed
variable-length inputs through one kernel, and the tiling it is launched with.

The kernel takes the causal mode (0 none, 1 top-left, 2 bottom-right) and the window ``(left, right)`` (-1
unbounded) and builds each sequence's visibility band itself (``common.cuh: make_band``), so packed sequences
get their own alignment. Varlen inputs ``[total, H, D]`` are launched as one batch entry ``[1, H, total, D]``
(a strided view) with batch strides 0 and the ``cu_seqlens`` prefix sums; ``lse`` then is ``[Hq, total_q]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from implementations.base import CausalVariant, new_output
from implementations.cupy import _kernels as K

ATTN_WARPS = 4
#: the kernel's causal modes
CAUSAL_MODE: dict[CausalVariant | None, int] = {None: 0, "top_left": 1, "bottom_right": 2}


@dataclass(frozen=True)
class FwdConfig:
    """Forward tiling: ``mt`` 16-row MMA tiles per warp (4 warps, BR = 64 * mt rows), ``bc`` keys per block."""

    mt: int
    bc: int

    @property
    def block_m(self) -> int:
        return 16 * self.mt * ATTN_WARPS


def padded_head_dim(d: int) -> int:
    """The head dim the kernels compute with: d rounded up to 16 (to 32 above 128, so that dK/dV can split
    the columns in halves of a multiple of 16); the extra columns are zeros in shared memory."""
    step = 16 if d <= 128 else 32
    return -(-d // step) * step


def fwd_config(dp: int) -> FwdConfig:
    """Forward tiles per padded head dim: 128 x 64 up to dp = 128 (32 rows per warp halve the shared-memory
    traffic per MMA), 64 x 32 above (the 16 x dp accumulators fill the registers)."""
    return FwdConfig(2, 64) if dp <= 128 else FwdConfig(1, 32)


def vec_ok(d: int, *tensors: torch.Tensor) -> bool:
    """16-byte loads are legal: d % 8 == 0, every stride of a dim longer than 1 a multiple of 8 elements,
    and 16-byte aligned base pointers."""
    if d % 8:
        return False
    for t in tensors:
        if t.data_ptr() % 16:
            return False
        if any(st % 8 for size, st in zip(t.shape[:-1], t.stride()[:-1]) if size > 1):
            return False
    return True


def _strides(t: torch.Tensor, count: int, varlen: bool) -> tuple:
    """The first ``count`` strides as kernel arguments, the batch stride 0 for a packed (varlen) view."""
    strides = t.stride()[:count]
    return tuple(K.i64(0 if varlen and n == 0 else st) for n, st in enumerate(strides))


def launch_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   causal: CausalVariant | None, window: tuple[int, int] | None, scale: float, *,
                   cu_seqlens: tuple[torch.Tensor, torch.Tensor, int] | None = None,
                   config: FwdConfig | None = None) -> None:
    """Launch ``attn_fwd`` on ``[B, H, S, D]`` views (``lse [B, Hq, S]`` with unit last stride);
    ``cu_seqlens = (cu_q, cu_k, max_seqlen_q)`` for a packed batch (``B = 1``)."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    varlen = cu_seqlens is not None
    dp = padded_head_dim(D)
    cfg = config or fwd_config(dp)
    vec = vec_ok(D, q, k, v, out)
    cu_q, cu_k = (cu_seqlens[0], cu_seqlens[1]) if varlen else (K.null_pointer(), K.null_pointer())
    rows, programs = (cu_seqlens[2], cu_seqlens[0].numel() - 1) if varlen else (Sq, B)
    expr = f"attn_fwd<{K.CXX_TYPE[q.dtype]}, {dp}, {cfg.mt}, {cfg.bc}, {K.cxx_bool(vec)}>"
    smem = (cfg.block_m + 4 * cfg.bc) * (dp + 8) * 2
    left, right = window if window is not None else (-1, -1)
    args = (q, k, v, out, lse, cu_q, cu_k, K.i32(Hq), K.i32(Hk), K.i32(Sq), K.i32(Sk), K.i32(D),
            *_strides(q, 3, varlen), *_strides(k, 3, varlen), *_strides(v, 3, varlen), *_strides(out, 3, varlen),
            *_strides(lse, 2, varlen), K.f32(scale * math.log2(math.e)), K.i32(CAUSAL_MODE[causal]), K.i32(left),
            K.i32(right))
    grid = (max(1, -(-rows // cfg.block_m)), programs * Hq)
    K.launch(K.kernel("attention_fwd", expr, q.device), grid, (32 * ATTN_WARPS,), args, q.device, smem)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                      scale: float, config: FwdConfig | None = None, *, window: tuple[int, int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of checked ``[B, H, S, D]`` inputs; ``config`` overrides the tiling (benchmarks compare
    them); ``window`` the sliding window ``(left, right)``."""
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output(q.shape[:3], torch.float32, q.device)
    launch_forward(q, k, v, out, lse, variant, window, scale, config=config)
    return out, lse


def launch_delta(out: torch.Tensor, dout: torch.Tensor, delta: torch.Tensor) -> None:
    """``delta = rowsum(dout * out)`` into the contiguous float32 ``delta [B, Hq, S]`` (``attn_delta``)."""
    B, Hq, Sq, D = out.shape
    rows = B * Hq * Sq
    args = (out, dout, delta, K.i32(Hq), K.i32(Sq), K.i32(D), *_strides(out, 3, False), *_strides(dout, 3, False),
            K.i64(rows))
    K.launch(K.kernel("attention_bwd", f"attn_delta<{K.CXX_TYPE[out.dtype]}>", out.device), (-(-rows // 8),),
             (256,), args, out.device)


def launch_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                    dout: torch.Tensor, grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    causal: CausalVariant | None, window: tuple[int, int] | None, scale: float, *,
                    cu_seqlens: tuple[torch.Tensor, torch.Tensor, int, int] | None = None) -> None:
    """Fill ``grads = (dq, dk, dv)`` (``attn_bwd_dkdv``, ``attn_bwd_dq``) from ``[B, H, S, D]`` views, ``lse``
    contiguous ``[B, Hq, S]``; ``cu_seqlens = (cu_q, cu_k, max_seqlen_q, max_seqlen_k)`` for a packed batch."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    dq, dk, dv = grads
    delta = torch.empty_like(lse)
    launch_delta(out, dout, delta)
    varlen = cu_seqlens is not None
    cu_q, cu_k, rows_q, rows_k = cu_seqlens if varlen else (K.null_pointer(), K.null_pointer(), Sq, Sk)
    programs = cu_seqlens[0].numel() - 1 if varlen else B
    dp = padded_head_dim(D)
    T, VEC = K.CXX_TYPE[q.dtype], K.cxx_bool(vec_ok(D, q, k, v, dout, dq, dk))
    left, right = window if window is not None else (-1, -1)
    inputs = (K.i32(Hq), K.i32(Hk), K.i32(Sq), K.i32(Sk), K.i32(D),
              *(st for t in (q, k, v, dout) for st in _strides(t, 3, varlen)))
    tail = (*_strides(lse, 2, varlen), K.f32(scale), K.i32(CAUSAL_MODE[causal]), K.i32(left), K.i32(right))
    threads, rows_per_cta = (32 * ATTN_WARPS,), 16 * ATTN_WARPS
    bq, cols = (64, dp) if dp <= 128 else (32, dp // 2)
    smem = (2 * rows_per_cta + 4 * bq) * (dp + 8) * 2 + 4 * bq * 4
    K.launch(K.kernel("attention_bwd", f"attn_bwd_dkdv<{T}, {dp}, {bq}, {cols}, {VEC}>", q.device),
             (max(1, -(-rows_k // rows_per_cta)), programs * Hk, dp // cols), threads,
             (q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, *inputs, *_strides(dk, 3, varlen), *tail), q.device, smem)
    bc = 64 if dp <= 128 else 32
    smem = (2 * rows_per_cta + 4 * bc) * (dp + 8) * 2
    K.launch(K.kernel("attention_bwd", f"attn_bwd_dq<{T}, {dp}, {bc}, {VEC}>", q.device),
             (max(1, -(-rows_q // rows_per_cta)), programs * Hq), threads,
             (q, k, v, dout, lse, delta, dq, cu_q, cu_k, *inputs, *_strides(dq, 3, varlen), *tail), q.device, smem)
