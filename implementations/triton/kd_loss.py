"""Fused knowledge-distillation loss and its gradient (SPEC KD-1, KD-2, KD-7).

Per row with student logits s, teacher logits t, temperature T, weight alpha and label y:

    LS = logsumexp(s/T),  LT = logsumexp(t/T),  pT = softmax(t/T),  L1 = logsumexp(s)
    KL = sum_v pT_v (t_v - s_v) / T - LT + LS                 (= KL(softmax(t/T) || softmax(s/T)))
    loss_row = alpha * T^2 * KL + (1 - alpha) * (L1 - s_y)
    ds_v = c * [alpha * T * (softmax(s/T)_v - pT_v) + (1 - alpha) * (softmax(s)_v - [v = y])]

with ``c = 1 / (number of rows whose label is not ignore_index)`` for counted rows and 0 otherwise;
the loss is the sum over rows of ``c * loss_row`` (an ``[N]`` float32 vector summed by torch).

One program per row, two passes over the vocabulary. Pass 1 reads s and t once and keeps running
(max, sum) pairs merged block by block (online logsumexp, as in ``softmax_stats``) for s/T, t/T and, when
the cross-entropy term is on, s; plus ``A = sum exp(t/T - max) (t - s)``, rescaled with the teacher's sum.
Block sums are added with Kahan compensation. Pass 2 reads s and t again and writes ds directly.
Nothing ``[N, V]`` is allocated but ds (KD-7). KL is clamped at 0 (it is >= 0 exactly; the clamp removes
rounding below zero, KD-3).
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import LN2_K, LOG2E_K, compensated_add, next_pow2

GPU_KD_BLOCK = 4096
INTERPRETER_KD_BLOCK = 1024
KD_WARPS = 8


@triton.jit
def _merge(m, z, c, x2):
    """Fold base-2 logits ``x2`` into the running ``(m, z)`` (``c``: Kahan compensation of z).

    Returns ``(m', z', c', rescale, e)`` with ``rescale = 2^(m - m')`` and ``e = 2^(x2 - m')``.
    """
    m_new = tl.maximum(m, tl.max(x2, 0))
    rescale = tl.exp2(m - m_new)
    e = tl.exp2(x2 - m_new)
    z, c = compensated_add(z * rescale, c * rescale, tl.sum(e, 0))
    return m_new, z, c, rescale, e


@triton.jit
def kd_loss_kernel(S, T, LABELS, COUNT, DS, ROW_LOSS, stride_s, stride_t, stride_ds, V,
                   inv_temp, temp, alpha, ignore_index,
                   BLOCK: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr):
    """Row ``program_id(0)``: writes ``ROW_LOSS[row] = c * loss_row`` (0 if ignored) and ``DS[row, :]``."""
    row = tl.program_id(0).to(tl.int64)
    s_row = S + row * stride_s
    t_row = T + row * stride_t
    lanes = tl.arange(0, BLOCK)
    c_temp = inv_temp * LOG2E_K  # x/T in base 2

    zero = tl.full((), 0.0, tl.float32)
    ms = tl.full((), float("-inf"), tl.float32)
    mt = tl.full((), float("-inf"), tl.float32)
    m1 = tl.full((), float("-inf"), tl.float32)
    zs, zt, z1, at = zero, zero, zero, zero  # sums, each with a Kahan compensation
    cs, ct, c1, ca = zero, zero, zero, zero
    for start in range(0, V, BLOCK):
        offs = start + lanes
        mask = offs < V
        s = tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_row + offs, mask=mask, other=0.0).to(tl.float32)
        ms, zs, cs, _, _ = _merge(ms, zs, cs, tl.where(mask, s * c_temp, float("-inf")))
        mt, zt, ct, rescale_t, et = _merge(mt, zt, ct, tl.where(mask, t * c_temp, float("-inf")))
        at, ca = compensated_add(at * rescale_t, ca * rescale_t, tl.sum(et * (t - s), 0))
        if HAS_CE:
            m1, z1, c1, _, _ = _merge(m1, z1, c1, tl.where(mask, s * LOG2E_K, float("-inf")))
    ls2 = ms + tl.log2(zs)  # base-2 logsumexp(s/T)
    lt2 = mt + tl.log2(zt)
    # LT - LS as (mt - ms) + log2(Zt / Zs): no rounding of the two ~log2(V)-sized sums before they cancel
    kl = tl.maximum(inv_temp * at / zt - ((mt - ms) + tl.log2(zt / zs)) * LN2_K, 0.0)

    inv_count = 1.0 / tl.maximum(tl.load(COUNT).to(tl.float32), 1.0)
    if HAS_LABELS:
        y = tl.load(LABELS + row)
        coef = tl.where(y != ignore_index, inv_count, 0.0)
    else:
        y = -1
        coef = inv_count
    loss = alpha * temp * temp * kl
    if HAS_CE:
        l1_2 = m1 + tl.log2(z1)
        s_y = tl.load(s_row + tl.where(y != ignore_index, y, 0)).to(tl.float32)
        loss += (1.0 - alpha) * (l1_2 * LN2_K - s_y)
    tl.store(ROW_LOSS + row, tl.where(coef > 0.0, loss * coef, 0.0))

    c_kd = coef * alpha * temp
    c_ce = coef * (1.0 - alpha)
    ds_row = DS + row * stride_ds
    for start in range(0, V, BLOCK):
        offs = start + lanes
        mask = offs < V
        s = tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_row + offs, mask=mask, other=0.0).to(tl.float32)
        g = c_kd * (tl.exp2(s * c_temp - ls2) - tl.exp2(t * c_temp - lt2))
        if HAS_CE:
            g += c_ce * (tl.exp2(s * LOG2E_K - l1_2) - tl.where(offs == y, 1.0, 0.0))
        tl.store(ds_row + offs, g.to(DS.dtype.element_ty), mask=mask)


def kd_loss(s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float, labels: torch.Tensor | None,
            ignore_index: int, ds_shape: torch.Size, block: int | None = None,
            num_warps: int = KD_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ds)`` of validated ``[N, V]`` rows; ``ds`` shaped ``ds_shape`` (the caller's logits shape)."""
    n_rows, vocab = s.shape
    if s.stride(1) != 1:
        s = s.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    if block is None:
        block = min(INTERPRETER_KD_BLOCK if s.device.type == "cpu" else GPU_KD_BLOCK, next_pow2(vocab))
    ds = new_output(ds_shape, s.dtype, s.device)
    ds_rows = ds.view(n_rows, vocab)
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=s.device)
    if labels is None:
        count = torch.full((), n_rows, dtype=torch.int64, device=s.device)
        label_arg = count  # unread: HAS_LABELS is off
    else:
        label_arg = labels.contiguous()
        count = (label_arg != ignore_index).sum()
    kd_loss_kernel[(n_rows,)](
        s, t, label_arg, count, ds_rows, row_loss, s.stride(0), t.stride(0), ds_rows.stride(0), vocab,
        1.0 / temperature, float(temperature), float(alpha), int(ignore_index),
        BLOCK=block, HAS_LABELS=labels is not None, HAS_CE=labels is not None and alpha < 1.0,
        num_warps=num_warps,
    )
    loss = new_output((), torch.float32, s.device)
    torch.sum(row_loss, dim=0, out=loss)
    return loss, ds
