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
Nothing ``[N, V]`` is allocated but ds (KD-7). Two kernels:

- ``kd_loss_split_kernel`` (one pass; the default): a row is cut into ``SPLIT`` parts of ``CHUNK``
  elements, one program per part. A program loads its part of s and t once, keeps it in registers,
  publishes its part's statistics, waits until every part of its row has published (a per-row arrival
  counter), merges the ``SPLIT`` partial statistics in part order (so every part of a row computes the
  same row statistics) and writes its part of ds from the registers. Each byte of s and t is read once and
  ds written once: the memory floor. Waiting on other programs is safe because programs take their
  (row, part) from a ticket counter in the order they start: when a program waits, every part with a
  smaller ticket has started, so the waits resolve as long as ``SPLIT`` programs can be resident at once
  (``SPLIT <= number of SMs`` is required). On the interpreter, which runs programs one after another,
  ``SPLIT`` is 1.
- ``kd_loss_kernel`` (two passes, for rows too long to split that way): one program per row; pass 1
  streams the row keeping running statistics merged block by block (block sums with Kahan
  compensation), pass 2 streams it again and writes ds.
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
#: one-pass part length and warps on the GPU: 32 elements of s and of t per thread stay in registers
GPU_KD_CHUNK = 16384
KD_SPLIT_WARPS = 16
#: per-part statistics stored by the one-pass kernel: ms, zs, mt, zt, A, m1, z1 (and one pad slot)
PART_STATS = 8
PART_STATS_K = tl.constexpr(PART_STATS)


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
def _part_stats(x2):
    """``(max, sum 2^(x2 - max), 2^(x2 - max))`` of base-2 values (masked lanes -inf; at least one is not)."""
    m = tl.max(x2, 0)
    e = tl.exp2(x2 - m)
    return m, tl.sum(e, 0), e


@triton.jit
def _merge_parts(m, z):
    """Merge per-part ``(m, z)`` vectors (absent parts ``(-inf, 0)``) in a fixed order; also returns
    the rescale factors ``2^(m - max)``."""
    m_all = tl.max(m, 0)
    f = tl.exp2(m - m_all)
    return m_all, tl.sum(z * f, 0), f


@triton.jit
def kd_loss_split_kernel(S, T, LABELS, COUNT, DS, ROW_LOSS, PART, SYNC, stride_s, stride_t, stride_ds, V,
                         inv_temp, temp, alpha, ignore_index,
                         SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, CHUNK: tl.constexpr,
                         HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr):
    """One part of one row (see the module docstring): ``SYNC[0]`` hands out tickets, ``SYNC[1 + row]``
    counts the row's parts that published their statistics in ``PART[row, part, :]``."""
    ticket = tl.atomic_add(SYNC, 1, sem="relaxed")
    row = (ticket // SPLIT).to(tl.int64)
    part = ticket % SPLIT
    s_row = S + row * stride_s
    t_row = T + row * stride_t
    offs = part * CHUNK + tl.arange(0, CHUNK)
    mask = offs < V
    c_temp = inv_temp * LOG2E_K
    s = tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_row + offs, mask=mask, other=0.0).to(tl.float32)

    ms, zs, _ = _part_stats(tl.where(mask, s * c_temp, float("-inf")))
    mt, zt, et = _part_stats(tl.where(mask, t * c_temp, float("-inf")))
    at = tl.sum(et * (t - s), 0)
    m1 = ms
    z1 = zs
    if HAS_CE:
        m1, z1, _ = _part_stats(tl.where(mask, s * LOG2E_K, float("-inf")))
    slot = tl.arange(0, PART_STATS_K)
    stats = tl.where(slot == 0, ms, tl.where(slot == 1, zs, tl.where(slot == 2, mt, tl.where(
        slot == 3, zt, tl.where(slot == 4, at, tl.where(slot == 5, m1, z1))))))
    part_base = PART + (row * SPLIT) * PART_STATS_K
    tl.store(part_base + part * PART_STATS_K + slot, stats)
    tl.debug_barrier()  # every thread's part of the store precedes the release below
    arrived = tl.atomic_add(SYNC + 1 + row, 1, sem="release") + 1
    while arrived < SPLIT:
        arrived = tl.atomic_add(SYNC + 1 + row, 0, sem="acquire")

    parts = tl.arange(0, SPLIT_P2)
    present = parts < SPLIT
    cell = part_base + parts * PART_STATS_K
    ms, zs, _ = _merge_parts(tl.load(cell + 0, mask=present, other=float("-inf"), cache_modifier=".cg"),
                             tl.load(cell + 1, mask=present, other=0.0, cache_modifier=".cg"))
    mt_p = tl.load(cell + 2, mask=present, other=float("-inf"), cache_modifier=".cg")
    mt, zt, ft = _merge_parts(mt_p, tl.load(cell + 3, mask=present, other=0.0, cache_modifier=".cg"))
    at = tl.sum(tl.load(cell + 4, mask=present, other=0.0, cache_modifier=".cg") * ft, 0)
    m1, z1, _ = _merge_parts(tl.load(cell + 5, mask=present, other=float("-inf"), cache_modifier=".cg"),
                             tl.load(cell + 6, mask=present, other=0.0, cache_modifier=".cg"))

    coef, y = _row_coef(LABELS, COUNT, row, ignore_index, HAS_LABELS)
    if part == 0:
        loss = _row_loss(ms, zs, mt, zt, at, m1, z1, s_row, y, inv_temp, temp, alpha, HAS_CE)
        tl.store(ROW_LOSS + row, tl.where(coef > 0.0, loss * coef, 0.0))
    g = _grad(s, t, offs, y, c_temp, ms + tl.log2(zs), mt + tl.log2(zt), m1 + tl.log2(z1), coef * alpha * temp,
              coef * (1.0 - alpha), HAS_CE)
    tl.store(DS + row * stride_ds + offs, g.to(DS.dtype.element_ty), mask=mask)


@triton.jit
def kd_loss_kernel(S, T, LABELS, COUNT, DS, ROW_LOSS, stride_s, stride_t, stride_ds, V,
                   inv_temp, temp, alpha, ignore_index,
                   BLOCK: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr):
    """Row ``program_id(0)``, two passes: writes ``ROW_LOSS[row] = c * loss_row`` (0 if ignored) and ``DS[row, :]``."""
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

    coef, y = _row_coef(LABELS, COUNT, row, ignore_index, HAS_LABELS)
    loss = _row_loss(ms, zs, mt, zt, at, m1, z1, s_row, y, inv_temp, temp, alpha, HAS_CE)
    tl.store(ROW_LOSS + row, tl.where(coef > 0.0, loss * coef, 0.0))

    ls2, lt2, l1_2 = ms + tl.log2(zs), mt + tl.log2(zt), m1 + tl.log2(z1)
    ds_row = DS + row * stride_ds
    for start in range(0, V, BLOCK):
        offs = start + lanes
        mask = offs < V
        s = tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_row + offs, mask=mask, other=0.0).to(tl.float32)
        g = _grad(s, t, offs, y, c_temp, ls2, lt2, l1_2, coef * alpha * temp, coef * (1.0 - alpha), HAS_CE)
        tl.store(ds_row + offs, g.to(DS.dtype.element_ty), mask=mask)


def split_parts(vocab: int, device: torch.device, chunk: int | None = None) -> tuple[int, int] | None:
    """``(parts, chunk)`` of the one-pass kernel for rows of ``vocab`` on ``device``, or None when a row
    needs more parts than can be resident at once (more than the device's SMs): then two passes run."""
    if device.type == "cpu":  # the interpreter runs one program at a time: one part per row
        return 1, next_pow2(vocab)
    chunk = min(chunk or GPU_KD_CHUNK, next_pow2(vocab))
    parts = -(-vocab // chunk)
    return (parts, chunk) if parts <= torch.cuda.get_device_properties(device).multi_processor_count else None


def kd_loss(s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float, labels: torch.Tensor | None,
            ignore_index: int, ds_shape: torch.Size, one_pass: bool = True, block: int | None = None,
            num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ds)`` of validated ``[N, V]`` rows; ``ds`` shaped ``ds_shape`` (the caller's logits shape).

    ``one_pass``: the split kernel where rows allow it (:func:`split_parts`), else the two-pass kernel;
    ``block``: the part length (one pass) or the streaming block (two passes); ``num_warps``: per program.
    """
    n_rows, vocab = s.shape
    if s.stride(1) != 1:
        s = s.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    ds = new_output(ds_shape, s.dtype, s.device)
    ds_rows = ds.view(n_rows, vocab)
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=s.device)
    if labels is None:
        count = torch.full((), n_rows, dtype=torch.int64, device=s.device)
        label_arg = count  # unread: HAS_LABELS is off
    else:
        label_arg = labels.contiguous()
        count = (label_arg != ignore_index).sum()
    common = (s, t, label_arg, count, ds_rows, row_loss)
    scalars = (s.stride(0), t.stride(0), ds_rows.stride(0), vocab, 1.0 / temperature, float(temperature),
               float(alpha), int(ignore_index))
    flags = {"HAS_LABELS": labels is not None, "HAS_CE": labels is not None and alpha < 1.0}
    split = split_parts(vocab, s.device, block) if one_pass else None
    if split is not None:
        parts, chunk = split
        partial = torch.empty((n_rows, parts, PART_STATS), dtype=torch.float32, device=s.device)
        sync = torch.zeros(1 + n_rows, dtype=torch.int32, device=s.device)
        kd_loss_split_kernel[(n_rows * parts,)](*common, partial, sync, *scalars, SPLIT=parts,
                                               SPLIT_P2=next_pow2(parts), CHUNK=chunk,
                                               num_warps=num_warps or KD_SPLIT_WARPS, **flags)
    else:
        if block is None:
            block = min(INTERPRETER_KD_BLOCK if s.device.type == "cpu" else GPU_KD_BLOCK, next_pow2(vocab))
        kd_loss_kernel[(n_rows,)](*common, *scalars, BLOCK=block, num_warps=num_warps or KD_WARPS, **flags)
    loss = new_output((), torch.float32, s.device)
    torch.sum(row_loss, dim=0, out=loss)
    return loss, ds
