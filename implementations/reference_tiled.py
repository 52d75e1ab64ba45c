"""The tiled reference backend: FlashAttention's algorithm, executed in NumPy as an explanation of it.

Every operation works on blocks and never holds an ``Sq x Sk`` (or ``[N, V]``) buffer (ATT-10, KD-7):

- ``attention``: FlashAttention-2's forward (Dao 2023, Algorithm 1). For each block of ``block_m`` query
  rows, walk the key blocks of ``block_n`` columns keeping a running row max ``m``, a running sum ``l`` and an
  unnormalised output accumulator, rescaled by ``exp(m_old - m_new)`` whenever the max grows; divide by
  ``l`` at the end and keep ``lse = m + log l``. Key blocks that causality hides entirely are skipped.
- ``attention_backward``: recomputation from ``lse`` (GRAD-2): ``delta = rowsum(dO ∘ O)`` in its own pass,
  then for each key block, over the query blocks that see it: ``P = exp(S - lse)``, ``dV += Pᵀ dO``,
  ``dP = dO Vᵀ``, ``dS = P ∘ (dP - delta)``, ``dK += dSᵀ Q``, ``dQ += dS K`` (both times ``scale``).
- ``softmax_stats``: the online softmax over blocks of the row, merged with SMX-2.
- ``kd_loss``: chunked over the vocabulary, two passes (online logsumexp, then loss and gradient chunk by chunk).
- ``reduce_sum``: the pairwise tree of ``schedule.pairwise_tree(n)``, one vectorised round at a time.

Arithmetic is float32 for float16 / bfloat16 / float32 inputs (accumulation in float32, as on tensor cores)
and float64 for float64 inputs. Each tile step works on all batches and heads at once: blocks are
``[B, Hk, G·rows, D]`` arrays, the ``G = Hq / Hk`` query heads of a KV head stacked as extra rows, so that
GQA reads each K, V block once without copying K, V per query head.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from implementations import ops, schedule
from implementations._numpy import (
    as_numpy,
    finite_or_zero,
    log_or_neg_inf,
    merge_stats,
    numpy_dtype,
    visible,
    write,
)
from implementations.base import Backend, InvalidInputError, causal_offset, new_output, wide_dtype
from implementations.ops import implementation
from implementations.reference import ReferenceBackend

TILES = ((16, 16), (32, 64), (64, 32), (64, 64), (128, 128))


class TiledReferenceBackend(Backend):
    """NumPy FlashAttention-2: tiled forward with online softmax, backward by recomputation from lse."""

    name = "reference-tiled"
    description = "NumPy FlashAttention-2 (tiles, online softmax, recompute from lse), chunked KD, pairwise tree"
    capabilities = dataclasses.replace(
        ReferenceBackend.capabilities,
        memory="linear",
        saves="lse",
        tiles=TILES,
        kd_fused=True,
        reduce_schedule="pairwise tree",
        notes=(
            "float32 arithmetic for float16/bfloat16/float32 inputs, float64 for float64",
            "lse from the forward's online softmax; backward recomputes P from lse",
        ),
    )

    def __init__(self, tiles: tuple[int, int] = (64, 64), kd_chunk: int = 4096, stats_block: int = 128) -> None:
        if tuple(tiles) not in TILES:
            raise InvalidInputError(f"tile sizes {tuple(tiles)} are not supported (supported: {list(TILES)})")
        #: (block_m, block_n) used when ``attention(..., tiles=None)``
        self.tiles: tuple[int, int] = (int(tiles[0]), int(tiles[1]))
        #: the most vocabulary columns per chunk of ``kd_loss`` (also at most V/32, see ``kd_loss``)
        self.kd_chunk = kd_chunk
        #: row elements per block of ``softmax_stats(..., block=None)``
        self.stats_block = stats_block

    # -- attention --------------------------------------------------------------------------------

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """ATT-1..4, 10: FlashAttention-2 forward (Algorithm 1), ``O(block)`` memory per step.

        Per query block, for each visible key block ``S = scale · Q_i K_jᵀ``:
        ``m_new = max(m, rowmax S)``, ``P = exp(S - m_new)``, ``l = e^(m - m_new) l + rowsum P``,
        ``acc = e^(m - m_new) acc + P V_j``. Then ``out = acc / l`` and ``lse = m + log l``; a row that sees
        no key keeps ``m = -inf``, ``l = 0`` and gets ``out = 0``, ``lse = -inf`` (ATT-4).
        """
        q, k, v, variant, scale = inp.q, inp.k, inp.v, inp.causal, inp.scale
        block_m, block_n = inp.tiles or self.tiles
        B, Hq, Sq, D = q.shape
        Hk, Sk = k.shape[1], k.shape[2]
        G = Hq // Hk
        dtype = wide_dtype(q.dtype)
        offset = causal_offset(variant, Sq, Sk)

        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        q5, out5, lse4 = _grouped(q, Hk), _grouped(out, Hk), _grouped(lse, Hk)
        for i0 in range(0, Sq, block_m):
            i1 = min(i0 + block_m, Sq)
            q_i = _query_rows(q5, i0, i1, dtype)
            m = np.full(q_i.shape[:-1], -np.inf, dtype=q_i.dtype)
            l = np.zeros_like(m)
            acc = np.zeros_like(q_i)
            for j0 in range(0, _visible_key_end(i1, Sk, offset), block_n):
                j1 = min(j0 + block_n, Sk)
                s = _scores(q_i, as_numpy(k[:, :, j0:j1], dtype), scale, G, (i0, i1), (j0, j1), offset)
                m_new = np.maximum(m, s.max(axis=-1))
                ref = finite_or_zero(m_new)
                p = np.exp(s - ref[..., None])
                rescale = np.exp(m - ref)
                l = rescale * l + p.sum(axis=-1)
                acc = rescale[..., None] * acc + p @ as_numpy(v[:, :, j0:j1], dtype)
                m = m_new
            o_i = np.divide(acc, l[..., None], out=np.zeros_like(acc), where=l[..., None] > 0)
            write(out5[:, :, :, i0:i1], o_i.reshape(B, Hk, G, i1 - i0, D))
            write(lse4[:, :, :, i0:i1], (m + log_or_neg_inf(l)).reshape(B, Hk, G, i1 - i0))
        return out, lse

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1..5: FlashAttention-2 backward, recomputing ``P = exp(S - lse)`` tile by tile.

        ``delta = rowsum(dO ∘ O)`` first (GRAD-3); then for each key block ``j``, over the query blocks
        ``i`` that see it: ``dV_j += P_ijᵀ dO_i``, ``dP = dO_i V_jᵀ``, ``dS = P_ij ∘ (dP - delta_i)``,
        ``dK_j += dSᵀ Q_i``, ``dQ_i += dS K_j``; ``dK`` and ``dQ`` are multiplied by ``scale`` once at the end.
        ``dQ`` is accumulated in a ``[B, Hq, Sq, D]`` buffer of the arithmetic dtype (linear in S). With GQA
        the group's query heads are rows of the same block, so ``dK_j``, ``dV_j`` sum over them (GRAD-4).
        A row with ``lse = -inf`` sees no key: its ``P`` is 0 and its ``dQ`` row 0 (GRAD-5).
        """
        q, k, v, out, lse, dout = inp.q, inp.k, inp.v, inp.out, inp.lse, inp.dout
        variant, scale = inp.causal, inp.scale
        block_m, block_n = inp.tiles or self.tiles
        B, Hq, Sq, D = q.shape
        Hk, Sk = k.shape[1], k.shape[2]
        G = Hq // Hk
        dtype = wide_dtype(q.dtype)
        offset = causal_offset(variant, Sq, Sk)

        delta4 = _grouped(torch.from_numpy(self._delta(out, dout, block_m)), Hk)
        q5, dout5, lse4 = _grouped(q, Hk), _grouped(dout, Hk), _grouped(lse, Hk)
        dq_acc = np.zeros((B, Hk, G, Sq, D), dtype=numpy_dtype(dtype))
        dk = new_output(k.shape, k.dtype, k.device)
        dv = new_output(v.shape, v.dtype, v.device)
        for j0 in range(0, Sk, block_n):
            j1 = min(j0 + block_n, Sk)
            k_j, v_j = as_numpy(k[:, :, j0:j1], dtype), as_numpy(v[:, :, j0:j1], dtype)
            dk_j = np.zeros(k_j.shape, dtype=k_j.dtype)
            dv_j = np.zeros_like(dk_j)
            for i0 in range(_first_visible_query_block(j0, offset, block_m), Sq, block_m):
                i1 = min(i0 + block_m, Sq)
                q_i, do_i = _query_rows(q5, i0, i1, dtype), _query_rows(dout5, i0, i1, dtype)
                # lse = -inf marks a row without visible keys; +inf there makes exp(S - lse) = 0, not NaN.
                lse_i = _query_rows(lse4, i0, i1, dtype)
                lse_i = np.where(np.isneginf(lse_i), np.inf, lse_i)
                s = _scores(q_i, k_j, scale, G, (i0, i1), (j0, j1), offset)
                p = np.exp(s - lse_i[..., None])
                dv_j += p.swapaxes(-1, -2) @ do_i
                dp = do_i @ v_j.swapaxes(-1, -2)
                ds = p * (dp - _query_rows(delta4, i0, i1, dtype)[..., None])
                dk_j += ds.swapaxes(-1, -2) @ q_i
                dq_acc[:, :, :, i0:i1] += (ds @ k_j).reshape(B, Hk, G, i1 - i0, D)
            write(dk[:, :, j0:j1], scale * dk_j)
            write(dv[:, :, j0:j1], dv_j)
        dq = new_output(q.shape, q.dtype, q.device)
        dq_acc *= scale
        write(dq, dq_acc.reshape(B, Hq, Sq, D))
        return dq, dk, dv

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """GRAD-3: ``delta = rowsum(dout ∘ out)``, the backward's first pass, exposed."""
        out, dout = inp.out, inp.dout
        delta = new_output(out.shape[:3], wide_dtype(out.dtype), out.device)
        write(delta, self._delta(out, dout, self.tiles[0]))
        return delta

    def _delta(self, out: torch.Tensor, dout: torch.Tensor, block_m: int) -> np.ndarray:
        """``rowsum(dout ∘ out)`` ``[B, Hq, Sq]`` in the arithmetic dtype, by blocks of ``block_m`` rows."""
        dtype = wide_dtype(out.dtype)
        Sq = out.shape[2]
        delta = np.empty(out.shape[:3], dtype=numpy_dtype(dtype))
        for i0 in range(0, Sq, block_m):
            i1 = min(i0 + block_m, Sq)
            o_i, do_i = as_numpy(out[:, :, i0:i1], dtype), as_numpy(dout[:, :, i0:i1], dtype)
            delta[:, :, i0:i1] = np.sum(do_i * o_i, axis=-1)
        return delta

    # -- softmax statistics -----------------------------------------------------------------------

    @implementation("softmax_stats")
    def softmax_stats(self, inp: ops.StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-1: online softmax statistics over blocks of ``block`` elements (default ``stats_block``).

        Each block gives ``(max, Σ exp(x - max))``; blocks are merged left to right with SMX-2.
        """
        x = inp.x
        block = self.stats_block if inp.block is None else inp.block
        if not isinstance(block, int) or block < 1:
            raise InvalidInputError(f"block must be a positive integer, got {block!r}")
        m, l = _online_stats(x, block, 1.0)
        m_out = new_output(m.shape, wide_dtype(x.dtype), x.device)
        l_out = new_output(l.shape, wide_dtype(x.dtype), x.device)
        write(m_out, m)
        write(l_out, l)
        return m_out, l_out

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``m = max(m1, m2)``, ``l = l1·e^(m1-m) + l2·e^(m2-m)``, computed in the arithmetic dtype."""
        m1, l1, m2, l2 = inp.m1, inp.l1, inp.m2, inp.l2
        dtype = wide_dtype(m1.dtype)
        m, l = merge_stats(as_numpy(m1, dtype), as_numpy(l1, dtype), as_numpy(m2, dtype), as_numpy(l2, dtype))
        m_out = new_output(m1.shape, m1.dtype, m1.device)
        l_out = new_output(m1.shape, m1.dtype, m1.device)
        write(m_out, m)
        write(l_out, l)
        return m_out, l_out

    # -- knowledge distillation -------------------------------------------------------------------

    @implementation("kd_loss")
    def kd_loss(self, inp: ops.KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """KD-1/2/7: the loss and ``ds`` in two passes over column chunks, with no ``[N, V]`` temporary.

        Pass 1: online softmax statistics ``(m, l)`` per row of ``s/T``, ``t/T`` (and of ``s`` when the
        hard-label term is on). Pass 2, per chunk: ``log p = (z - m) - log l`` for ``z = s/T`` and ``t/T``;
        add ``Σ p_t (log p_t - log p_s)`` to each row's KL and write the chunk of the gradient
        ``w · (α·T·(p_s - p_t) + (1-α)·(softmax(s) - onehot(y)))`` straight into ``ds``, where ``w`` is
        ``1/n`` for the ``n`` counted rows (label != ``ignore_index``) and 0 for the others.

        Chunks are ``kd_chunk`` columns wide, and at most ``V/32`` so that the few ``[N, chunk]``
        temporaries of a step stay a small fraction of one ``[N, V]`` array even for small vocabularies.
        """
        s2, t2, y, alpha, T = inp.s, inp.t, inp.labels, inp.alpha, inp.temperature
        dtype = wide_dtype(s2.dtype)
        N, V = s2.shape
        chunk = min(self.kd_chunk, -(-V // 32))
        counted = np.ones(N, dtype=bool) if y is None else y.numpy() != inp.ignore_index
        n_counted = int(counted.sum())
        weight = (counted / max(n_counted, 1)).astype(numpy_dtype(dtype))[:, None]
        hard = y is not None and alpha < 1

        student, teacher = _LogSoftmax(s2, chunk, T), _LogSoftmax(t2, chunk, T)
        if hard:
            student_t1 = _LogSoftmax(s2, chunk, 1.0)
            rows = np.flatnonzero(counted)
            labels_np = y.numpy()[rows]

        ds = new_output(inp.shape, s2.dtype, s2.device)
        ds2 = ds.view(N, V)
        kl = np.zeros(N, dtype=numpy_dtype(dtype))
        for c0 in range(0, V, chunk):
            c1 = min(c0 + chunk, V)
            log_ps, log_pt = student.chunk(c0, c1), teacher.chunk(c0, c1)
            ps, pt = np.exp(log_ps), np.exp(log_pt)
            kl += np.where(pt > 0, pt * (log_pt - log_ps), 0).sum(axis=1)  # 0 · log 0 = 0
            grad = (alpha * T) * (ps - pt)
            if hard:
                grad += (1 - alpha) * np.exp(student_t1.chunk(c0, c1))
                here = (labels_np >= c0) & (labels_np < c1)
                grad[rows[here], labels_np[here] - c0] -= 1 - alpha
            grad *= weight
            write(ds2[:, c0:c1], grad)

        row_loss = alpha * T * T * kl
        if hard:
            log_p_label = student_t1.at(rows, labels_np)
            row_loss[rows] += (1 - alpha) * -log_p_label
        loss = new_output((), dtype, s2.device)
        loss.fill_(float(row_loss[counted].sum() / n_counted) if n_counted else 0.0)
        return loss, ds

    # -- reduction --------------------------------------------------------------------------------

    @implementation("reduce_sum")
    def reduce_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, schedule.DeferredSchedule]:
        """WD-1/2: float32 sum following ``schedule.pairwise_tree(n)`` exactly.

        Round ``r`` (stride ``2^r``) adds ``slot[i + stride]`` into ``slot[i]`` for every ``i`` that is a
        multiple of ``2·stride`` with ``i + stride < n``; all additions of a round at once.
        """
        x = inp.x
        n = x.numel()
        slots = as_numpy(x, torch.float32).copy()
        stride = 1
        while stride < n:
            slots[:n - stride:2 * stride] += slots[stride::2 * stride]
            stride *= 2
        value = new_output((), torch.float32, x.device)
        value.fill_(float(slots[0]))
        return value, schedule.DeferredSchedule(n, lambda: schedule.pairwise_tree(n))

    @implementation("prefix_sum")
    def prefix_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, schedule.ScanSchedule]:
        """WD-5: Hillis-Steele inclusive scan in float32: round ``d`` adds ``y[i - 2^d]`` into ``y[i]`` for
        every ``i >= 2^d`` at once (all reads before the writes), ``log2 n`` rounds."""
        x = inp.x
        n = x.numel()
        slots = as_numpy(x, torch.float32).copy()
        offset = 1
        while offset < n:
            slots[offset:] = slots[offset:] + slots[:n - offset]  # the right side is evaluated first
            offset *= 2
        y = new_output(x.shape, torch.float32, x.device)
        write(y, slots)
        return y, schedule.hillis_steele_scan(n)


def _grouped(x: torch.Tensor, Hk: int) -> torch.Tensor:
    """View ``[B, Hq, ...]`` as ``[B, Hk, G, ...]``: query head ``h`` is KV head ``h // G``'s member ``h % G``."""
    return x.unflatten(1, (Hk, x.shape[1] // Hk))


def _query_rows(x: torch.Tensor, i0: int, i1: int, dtype: torch.dtype) -> np.ndarray:
    """Rows ``i0:i1`` of a grouped ``[B, Hk, G, S, ...]`` tensor as a ``[B, Hk, G·(i1-i0), ...]`` array.

    A copy, except where NumPy can reshape the slice in place (``G = 1``, dtype unchanged): read-only use.
    """
    rows = as_numpy(x[:, :, :, i0:i1], dtype)
    return rows.reshape(rows.shape[0], rows.shape[1], -1, *rows.shape[4:])


def _visible_key_end(i1: int, Sk: int, offset: int | None) -> int:
    """One past the last key any of the queries ``< i1`` sees (ATT-3); key blocks from there on are skipped."""
    return Sk if offset is None else max(0, min(Sk, i1 + offset))


def _first_visible_query_block(j0: int, offset: int | None, block_m: int) -> int:
    """Start of the first query block with a query that sees key ``j0`` or a later one (``i + offset >= j0``)."""
    return 0 if offset is None else max(0, j0 - offset) // block_m * block_m


def _scores(
    q_i: np.ndarray,
    k_j: np.ndarray,
    scale: float,
    G: int,
    rows: tuple[int, int],
    cols: tuple[int, int],
    offset: int | None,
) -> np.ndarray:
    """One tile ``S = scale · Q_i K_jᵀ`` ``[B, Hk, G·m, n]``; ``-inf`` where causality hides the key (ATT-3).

    Only tiles crossed by the causal boundary (last key of the tile after the first query's last visible
    key) are masked; a tile entirely hidden is never computed.
    """
    s = q_i @ k_j.swapaxes(-1, -2)
    s *= scale
    (i0, i1), (j0, j1) = rows, cols
    if offset is not None and j1 - 1 > i0 + offset:
        hidden = ~visible(np.arange(i0, i1), np.arange(j0, j1), offset)
        s.reshape(*s.shape[:2], G, i1 - i0, j1 - j0)[..., hidden] = -np.inf
    return s


def _online_stats(x: torch.Tensor, width: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """SMX-1 of ``x / temperature`` row by row, over column blocks of ``width``, merged with SMX-2."""
    dtype = wide_dtype(x.dtype)
    m = np.full(x.shape[0], -np.inf, dtype=numpy_dtype(dtype))
    l = np.zeros_like(m)
    for c0 in range(0, x.shape[1], width):
        z = as_numpy(x[:, c0:c0 + width], dtype) / temperature
        m_block = z.max(axis=1)
        l_block = np.exp(z - finite_or_zero(m_block)[:, None]).sum(axis=1)
        m, l = merge_stats(m, l, m_block, l_block)
    return m, l


class _LogSoftmax:
    """Row-wise ``log softmax(x / T)`` of ``[N, V]`` logits, available chunk by chunk after one stats pass.

    ``log p = (z - m) - log l`` (max first, as torch's log_softmax does): for logits shifted by a large
    per-row constant, ``z - m`` stays exact where rounding ``m + log l`` first would not (KD-3, KD-4).
    """

    def __init__(self, x: torch.Tensor, width: int, temperature: float) -> None:
        self.x, self.temperature = x, temperature
        self.dtype = wide_dtype(x.dtype)
        m, l = _online_stats(x, width, temperature)
        self.m, self.log_l = m[:, None], log_or_neg_inf(l)[:, None]

    def chunk(self, c0: int, c1: int) -> np.ndarray:
        """Columns ``c0:c1``, ``[N, c1 - c0]``."""
        return (as_numpy(self.x[:, c0:c1], self.dtype) / self.temperature - self.m) - self.log_l

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The elements ``(rows[i], cols[i])``."""
        z = as_numpy(self.x[torch.from_numpy(rows), torch.from_numpy(cols)], self.dtype) / self.temperature
        return (z - self.m[rows, 0]) - self.log_l[rows, 0]
