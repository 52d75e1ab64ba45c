"""Online-softmax statistics of rows (SPEC SMX-1, SMX-2, SMX-5).

``softmax_stats``: one program per row walks the row in blocks of ``step`` columns and merges each block
into the running pair with SMX-2's rule

    (m, l) + block = (m', l * exp(m - m') + sum_j exp(x_j - m')),   m' = max(m, max_j x_j)

so ``m = max x`` exactly and ``l = sum exp(x - m)``. Block sums are reduced by ``tl.sum`` and added to
``l`` with Kahan compensation, so many small blocks cost no more accuracy than one. Exponentials are taken
against 0 while the running max is still ``-inf`` (a row or block of ``-inf``), which keeps ``(-inf, 0)``
the identity with no NaN.

``softmax_merge``: the same rule elementwise on two tensors of pairs.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import LOG2E_K, compensated_add, next_pow2

#: default column block: GPU (8 warps stream 16 KiB a step) and interpreter (few NumPy steps)
GPU_STATS_BLOCK = 4096
INTERPRETER_STATS_BLOCK = 1024
STATS_WARPS = 8
MERGE_BLOCK = 1024


@triton.jit
def softmax_stats_kernel(X, M, L, stride_xn, stride_xl, n_cols,
                         STEP: tl.constexpr, BLOCK: tl.constexpr):
    """Row ``program_id(0)``: ``M = max x``, ``L = sum exp(x - M)`` over blocks of ``STEP <= BLOCK`` columns."""
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    base = X + row * stride_xn
    m = tl.full((), float("-inf"), tl.float32)
    l = tl.full((), 0.0, tl.float32)
    comp = tl.full((), 0.0, tl.float32)  # Kahan compensation of l
    for start in range(0, n_cols, STEP):
        offs = start + lanes
        if STEP == BLOCK:
            mask = offs < n_cols
        else:
            mask = (lanes < STEP) & (offs < n_cols)
        x = tl.load(base + offs * stride_xl, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp2((m - m_ref) * LOG2E_K)
        l, comp = compensated_add(l * rescale, comp * rescale, tl.sum(tl.exp2((x - m_ref) * LOG2E_K), 0))
        m = m_new
    tl.store(M + row, m)
    tl.store(L + row, l)


@triton.jit
def softmax_merge_kernel(M1, L1, M2, L2, M, L, n, BLOCK: tl.constexpr):
    """Elementwise ``(m, l) = (m1, l1) + (m2, l2)`` of SMX-2 on flat contiguous tensors."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m1 = tl.load(M1 + offs, mask=mask, other=0.0).to(tl.float32)
    m2 = tl.load(M2 + offs, mask=mask, other=0.0).to(tl.float32)
    l1 = tl.load(L1 + offs, mask=mask, other=0.0).to(tl.float32)
    l2 = tl.load(L2 + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.maximum(m1, m2)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    l = l1 * tl.exp2((m1 - m_ref) * LOG2E_K) + l2 * tl.exp2((m2 - m_ref) * LOG2E_K)
    tl.store(M + offs, m.to(M.dtype.element_ty), mask=mask)
    tl.store(L + offs, l.to(L.dtype.element_ty), mask=mask)


def softmax_stats(x: torch.Tensor, step: int | None = None,
                  num_warps: int = STATS_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, l)`` float32 ``[N]`` of a validated ``[N, L]`` tensor; ``step`` = block length (None: default)."""
    n_rows, n_cols = x.shape
    if step is None:
        step = INTERPRETER_STATS_BLOCK if x.device.type == "cpu" else GPU_STATS_BLOCK
        step = min(step, next_pow2(n_cols))
    m = new_output((n_rows,), torch.float32, x.device)
    l = new_output((n_rows,), torch.float32, x.device)
    softmax_stats_kernel[(n_rows,)](x, m, l, x.stride(0), x.stride(1), n_cols,
                                    STEP=step, BLOCK=next_pow2(step), num_warps=num_warps)
    return m, l


def softmax_merge(m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor,
                  l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SMX-2 merge of validated, equal-shape pairs; results shaped and typed like ``m1``."""
    m = new_output(m1.shape, m1.dtype, m1.device)
    l = new_output(m1.shape, m1.dtype, m1.device)
    n = m1.numel()
    flat = [t.contiguous() for t in (m1, l1, m2, l2)]
    softmax_merge_kernel[(triton.cdiv(n, MERGE_BLOCK),)](*flat, m, l, n, BLOCK=MERGE_BLOCK, num_warps=4)
    return m, l
