"""Fused knowledge-distillation loss and its gradient (SPEC KD-1, KD-2, KD-7).

Per row with student logits s, teacher logits t, temperature T, weight alpha and label y:

    LS = logsumexp(s/T),  LT = logsumexp(t/T),  pT = softmax(t/T),  L1 = logsumexp(s)
    KL = sum_v pT_v (t_v - s_v) / T - LT + LS                 (= KL(softmax(t/T) || softmax(s/T)))
    loss_row = alpha * T^2 * KL + (1 - alpha) * (L1 - s_y)
    ds_v = c * [alpha * T * (softmax(s/T)_v - pT_v) + (1 - alpha) * (softmax(s)_v - [v = y])]

with ``c = 1 / (number of rows whose label is not ignore_index)`` for counted rows and 0 otherwise;
the loss is the sum over rows of ``c * loss_row`` (an ``[N]`` float32 vector summed by torch).

Statistics are kept in base 2: for each of s/T, t/T and (with the cross-entropy term) s a pair
(max m, sum z of 2^(x - m)), plus ``A = sum 2^(t/T - mt) (t - s)`` for the teacher. KL is then
``A/(T z_t) - ((mt - ms) + log2(z_t / z_s)) ln 2`` (no rounding of the two ~log2(V)-sized logsumexps
before they cancel), clamped at 0 (it is >= 0 exactly; the clamp removes rounding below zero, KD-3).
Nothing ``[N, V]`` is allocated but ds (KD-7).

``kd_loss_kernel``: a row is cut into parts of ``CHUNK`` columns, one program each. Pass 1 streams the
part of s and t keeping the running statistics, merged block by block (block sums with Kahan compensation;
exponent base 0 while a running max is still -inf, and teacher entries of weight 0 add nothing, so rows
starting with -inf logits give no NaN). The program publishes its part's statistics, waits until every
part of its row has published (a per-row arrival counter), merges them in part order (so every part of a
row computes the same row statistics) and streams its part again, last block first, writing ds. A part is
64 KB of s and t (8192 float32 columns), so pass 2 finds it in L2: HBM sees s and t about once. Pass 2's
reads and the ds stores carry an evict-first hint so they do not push out parts still waiting for pass 2.

Waiting on other programs is safe because programs take their (row, part) from a ticket counter in the
order they start: when a program waits, every part with a smaller ticket has started, so the waits
resolve as long as a row's parts can be resident at once (:func:`split_parts` keeps parts <= SMs). The
interpreter runs programs one after another, so there a row is one part (no wait).

Two passes from L2 rather than one pass holding the part in registers: the one-pass form reads HBM once
but runs in phases (load, reduce, wait, compute, store) with one or two programs per SM, while here loads
stay in flight throughout (NOTES.md has the timings of both).
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ..base import new_output
from .common import LN2_K, LOG2E_K, compensated_add, next_pow2

#: GPU defaults: parts of 8192 columns streamed 2048 at a time (a part's s and t, 64 KB, are still in L2
#: when pass 2 reads them again)
GPU_KD_CHUNK = 8192
GPU_KD_BLOCK = 2048
INTERPRETER_KD_BLOCK = 1024
KD_WARPS = 4
#: per-part statistics published for the row's other parts: ms, zs, mt, zt, A, m1, z1 (and one pad slot)
PART_STATS = 8
PART_STATS_K = tl.constexpr(PART_STATS)
#: pass 2's reads and the ds writes are not read again: evicted first, so the lines pass 1 brought into L2
#: for other parts' pass 2 stay (NOTES.md has the timings with and without the hint)
EVICT_PASS2 = tl.constexpr("evict_first")


@triton.jit
def _merge(m, z, c, x2):
    """Fold base-2 logits ``x2`` into the running ``(m, z)`` (``c``: Kahan compensation of z).

    Returns ``(m', z', c', rescale, e)`` with ``rescale = 2^(m - m')`` and ``e = 2^(x2 - m')``.
    """
    m_new = tl.maximum(m, tl.max(x2, 0))
    base = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf while every value so far is -inf
    rescale = tl.exp2(m - base)
    e = tl.exp2(x2 - base)
    z, c = compensated_add(z * rescale, c * rescale, tl.sum(e, 0))
    return m_new, z, c, rescale, e


@triton.jit
def _row_loss(ms, zs, mt, zt, at, m1, z1, s_row, y, inv_temp, temp, alpha, HAS_CE: tl.constexpr):
    """``alpha T^2 KL + (1 - alpha) CE`` of one row from its base-2 statistics (module docstring)."""
    kl = tl.maximum(inv_temp * at / zt - ((mt - ms) + tl.log2(zt / zs)) * LN2_K, 0.0)
    loss = alpha * temp * temp * kl
    if HAS_CE:
        s_y = tl.load(s_row + tl.where(y >= 0, y, 0)).to(tl.float32)
        loss += (1.0 - alpha) * ((m1 + tl.log2(z1)) * LN2_K - s_y)
    return loss


@triton.jit
def _row_coef(LABELS, COUNT, row, ignore_index, HAS_LABELS: tl.constexpr):
    """``(c, y)``: the row's weight ``1 / count`` (0 when its label is ignored) and its label (-1: none)."""
    inv_count = 1.0 / tl.maximum(tl.load(COUNT).to(tl.float32), 1.0)
    if HAS_LABELS:
        y = tl.load(LABELS + row)
        return tl.where(y != ignore_index, inv_count, 0.0), tl.where(y != ignore_index, y, -1)
    else:
        return inv_count, -1


@triton.jit
def _grad(s, t, offs, y, c_temp, ls2, lt2, l1_2, c_kd, c_ce, HAS_CE: tl.constexpr):
    """``ds`` of elements ``offs`` from the row's base-2 logsumexps ``ls2`` (s/T), ``lt2`` (t/T), ``l1_2`` (s)."""
    g = c_kd * (tl.exp2(s * c_temp - ls2) - tl.exp2(t * c_temp - lt2))
    if HAS_CE:
        g += c_ce * (tl.exp2(s * LOG2E_K - l1_2) - tl.where(offs == y, 1.0, 0.0))
    return g


@triton.jit
def _stats(s_row, t_row, lo, hi, c_temp, BLOCK: tl.constexpr, HAS_CE: tl.constexpr):
    """Pass 1 over columns ``[lo, hi)``: base-2 ``(ms, zs, mt, zt, A, m1, z1)`` (module docstring)."""
    lanes = tl.arange(0, BLOCK)
    zero = tl.full((), 0.0, tl.float32)
    ms = tl.full((), float("-inf"), tl.float32)
    mt = tl.full((), float("-inf"), tl.float32)
    m1 = tl.full((), float("-inf"), tl.float32)
    zs, zt, z1, at = zero, zero, zero, zero  # sums, each with a Kahan compensation
    cs, ct, c1, ca = zero, zero, zero, zero
    for start in range(lo, hi, BLOCK):
        offs = start + lanes
        mask = offs < hi
        s = tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_row + offs, mask=mask, other=0.0).to(tl.float32)
        ms, zs, cs, _, _ = _merge(ms, zs, cs, tl.where(mask, s * c_temp, float("-inf")))
        mt, zt, ct, rescale_t, et = _merge(mt, zt, ct, tl.where(mask, t * c_temp, float("-inf")))
        at, ca = compensated_add(at * rescale_t, ca * rescale_t, tl.sum(tl.where(et > 0.0, et * (t - s), 0.0), 0))
        if HAS_CE:
            m1, z1, c1, _, _ = _merge(m1, z1, c1, tl.where(mask, s * LOG2E_K, float("-inf")))
    return ms, zs, mt, zt, at, m1, z1


@triton.jit
def _merge_parts(cells, present, slot):
    """Statistic ``slot`` pair ``(m, z)`` of every part of a row merged in part order; also ``2^(m_p - m)``."""
    m = tl.load(cells + slot, mask=present, other=float("-inf"), cache_modifier=".cg")
    z = tl.load(cells + slot + 1, mask=present, other=0.0, cache_modifier=".cg")
    m_all = tl.max(m, 0)
    f = tl.exp2(m - tl.where(m_all == float("-inf"), 0.0, m_all))
    return m_all, tl.sum(z * f, 0), f


@triton.jit
def kd_loss_kernel(S, T, LABELS, COUNT, DS, ROW_LOSS, PART, SYNC, stride_s, stride_t, stride_ds, V,
                   inv_temp, temp, alpha, ignore_index,
                   SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                   HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr):
    """One part (``CHUNK`` columns) of one row: pass 1, publish, wait for the row's other parts, merge, pass 2.

    ``SYNC[0]`` hands out tickets (row, part) in the order programs start; ``SYNC[1 + row]`` counts the parts
    of the row that published their statistics in ``PART[row, part, :]``. Writes ``ROW_LOSS[row] = c * loss``
    (0 if ignored; part 0) and the part's columns of ``DS[row, :]``.
    """
    ticket = tl.atomic_add(SYNC, 1, sem="relaxed")
    row = (ticket // SPLIT).to(tl.int64)
    part = ticket % SPLIT
    s_row = S + row * stride_s
    t_row = T + row * stride_t
    lo = part * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    c_temp = inv_temp * LOG2E_K  # x/T in base 2
    ms, zs, mt, zt, at, m1, z1 = _stats(s_row, t_row, lo, hi, c_temp, BLOCK, HAS_CE)
    if SPLIT > 1:
        slot = tl.arange(0, PART_STATS_K)
        stats = tl.where(slot == 0, ms, tl.where(slot == 1, zs, tl.where(slot == 2, mt, tl.where(
            slot == 3, zt, tl.where(slot == 4, at, tl.where(slot == 5, m1, z1))))))
        cells = PART + row * SPLIT * PART_STATS_K
        tl.store(cells + part * PART_STATS_K + slot, stats)
        tl.debug_barrier()  # every thread's share of the store precedes the release below
        arrived = tl.atomic_add(SYNC + 1 + row, 1, sem="release") + 1
        while arrived < SPLIT:
            arrived = tl.atomic_add(SYNC + 1 + row, 0, sem="acquire")
        parts = tl.arange(0, SPLIT_P2)
        present = parts < SPLIT
        part_cells = cells + parts * PART_STATS_K
        ms, zs, _ = _merge_parts(part_cells, present, 0)
        mt, zt, f_t = _merge_parts(part_cells, present, 2)
        at = tl.sum(tl.load(part_cells + 4, mask=present, other=0.0, cache_modifier=".cg") * f_t, 0)
        m1, z1, _ = _merge_parts(part_cells, present, 5)

    coef, y = _row_coef(LABELS, COUNT, row, ignore_index, HAS_LABELS)
    if part == 0:
        loss = _row_loss(ms, zs, mt, zt, at, m1, z1, s_row, y, inv_temp, temp, alpha, HAS_CE)
        tl.store(ROW_LOSS + row, tl.where(coef > 0.0, loss * coef, 0.0))

    # pass 2, last block first: the most recently read columns are the likeliest still in L2
    # z1 is 0 without the CE term (nothing was summed): log2 of 1 there, the value unused
    ls2, lt2, l1_2 = ms + tl.log2(zs), mt + tl.log2(zt), m1 + tl.log2(tl.where(z1 > 0.0, z1, 1.0))
    c_kd, c_ce = coef * alpha * temp, coef * (1.0 - alpha)
    ds_row = DS + row * stride_ds
    lanes = tl.arange(0, BLOCK)
    last = lo + ((hi - lo - 1) // BLOCK) * BLOCK
    for i in range(0, tl.cdiv(hi - lo, BLOCK)):
        offs = last - i * BLOCK + lanes
        mask = offs < hi
        s = tl.load(s_row + offs, mask=mask, other=0.0, eviction_policy=EVICT_PASS2).to(tl.float32)
        t = tl.load(t_row + offs, mask=mask, other=0.0, eviction_policy=EVICT_PASS2).to(tl.float32)
        g = _grad(s, t, offs, y, c_temp, ls2, lt2, l1_2, c_kd, c_ce, HAS_CE)
        tl.store(ds_row + offs, g.to(DS.dtype.element_ty), mask=mask, eviction_policy=EVICT_PASS2)


def split_parts(vocab: int, device: torch.device, chunk: int | None = None, block: int | None = None
                ) -> tuple[int, int, int]:
    """``(parts, chunk, block)`` for rows of ``vocab`` columns on ``device``.

    The interpreter runs programs one after another (a waiting program would wait forever): one part per
    row. On the GPU parts of ``chunk`` columns, widened so a row never has more parts than the device has
    SMs (then all parts of a row can be resident at once, which the wait needs).
    """
    if device.type == "cpu":
        block = min(block or INTERPRETER_KD_BLOCK, next_pow2(vocab))
        return 1, -(-vocab // block) * block, block
    block = min(block or GPU_KD_BLOCK, next_pow2(vocab))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    chunk = max(chunk or GPU_KD_CHUNK, -(-vocab // sms))
    chunk = -(-chunk // block) * block
    return -(-vocab // chunk), chunk, block


def kd_loss(s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float, labels: torch.Tensor | None,
            ignore_index: int, ds_shape: torch.Size, chunk: int | None = None, block: int | None = None,
            num_warps: int = KD_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ds)`` of validated ``[N, V]`` rows; ``ds`` shaped ``ds_shape`` (the caller's logits shape);
    ``chunk``: columns per part, ``block``: columns per step (None: the device's defaults, :func:`split_parts`)."""
    n_rows, vocab = s.shape
    if s.stride(1) != 1:
        s = s.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    parts, chunk, block = split_parts(vocab, s.device, chunk, block)
    ds = new_output(ds_shape, s.dtype, s.device)
    ds_rows = ds.view(n_rows, vocab)
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=s.device)
    if labels is None:
        count = torch.full((), n_rows, dtype=torch.int64, device=s.device)
        label_arg = count  # unread: HAS_LABELS is off
    else:
        label_arg = labels.contiguous()
        count = (label_arg != ignore_index).sum()
    partial = torch.empty((n_rows, parts, PART_STATS) if parts > 1 else (1,), dtype=torch.float32, device=s.device)
    sync = torch.zeros(1 + n_rows, dtype=torch.int32, device=s.device)
    kd_loss_kernel[(n_rows * parts,)](
        s, t, label_arg, count, ds_rows, row_loss, partial, sync, s.stride(0), t.stride(0), ds_rows.stride(0),
        vocab, 1.0 / temperature, float(temperature), float(alpha), int(ignore_index),
        SPLIT=parts, SPLIT_P2=next_pow2(parts), CHUNK=chunk, BLOCK=block, HAS_LABELS=labels is not None,
        HAS_CE=labels is not None and alpha < 1.0, num_warps=num_warps,
    )
    loss = new_output((), torch.float32, s.device)
    torch.sum(row_loss, dim=0, out=loss)
    return loss, ds
