"""The tiled reference backend: FlashAttention's algorithm, executed in NumPy as an explanation of it.

Every operation works on blocks and never holds an ``Sq x Sk`` (or ``[N, V]``) buffer (ATT-10, KD-7):

- ``attention``, ``attention_backward``: FlashAttention-2's forward (Dao 2023, Algorithm 1) and its backward by
  recomputation from ``lse`` (GRAD-2), in :mod:`implementations.tiled_attention`; key blocks that causality or
  the window hides from a whole query block are skipped, and the variants (SPEC VAR) act on each tile.
- ``attention_varlen`` and its backward: the same per sequence, on views of the packed tensors (SPEC VLEN).
- ``attention_decode_paged``: split-KV over the pages merged with the softmax-statistics algebra (SPEC DEC),
  in :mod:`implementations.tiled_decode`.
- ``attention_fp8``: the forward on the dequantized inputs (SPEC FP8).
- ``softmax_stats``: the online softmax over blocks of the row, merged with SMX-2.
- ``kd_loss``: chunked over the vocabulary, two passes (online logsumexp, then loss and gradient chunk by chunk).
- ``reduce_sum``: the pairwise tree of ``schedule.pairwise_tree(n)``, one vectorised round at a time.

Arithmetic is float32 for float16 / bfloat16 / float32 inputs (accumulation in float32, as on tensor cores)
and float64 for float64 inputs.
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
    stats_outputs,
    write,
)
from implementations.base import Backend, InvalidInputError, new_output, wide_dtype
from implementations.ops import implementation
from implementations.reference import ReferenceBackend
from implementations.tiled_attention import Grads, backward_into, forward_into, row_delta
from implementations.tiled_decode import decode_into
from implementations.variants import PLAIN

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
        """ATT-1..4, 10, VAR: FlashAttention-2 forward (``tiled_attention.forward_into``), ``O(block)`` memory
        per step; key blocks no query of a block sees (causal, window) are skipped."""
        q = inp.q
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        forward_into(out, lse, q, inp.k, inp.v, inp.causal, inp.scale, inp.variants, inp.tiles or self.tiles)
        return out, lse

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1..5, VAR: FlashAttention-2 backward recomputing ``P = exp(S - lse)`` tile by tile
        (``tiled_attention.backward_into``); ``dQ`` is accumulated in a ``[B, Hq, Sq, D]`` buffer of the
        arithmetic dtype (linear in S)."""
        grads = Grads(*(new_output(x.shape, x.dtype, x.device) for x in (inp.q, inp.k, inp.v)))
        backward_into(grads, inp.q, inp.k, inp.v, inp.out, inp.lse, inp.dout, inp.causal, inp.scale, inp.variants,
                      inp.tiles or self.tiles)
        return grads.dq, grads.dk, grads.dv

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """GRAD-3: ``delta = rowsum(dout ∘ out)``, the backward's first pass, exposed."""
        out, dout = inp.out, inp.dout
        delta = new_output(out.shape[:3], wide_dtype(out.dtype), out.device)
        write(delta, row_delta(out, dout, self.tiles[0]))
        return delta

    # -- attention variants: packed sequences, paged decode, fp8 ----------------------------------------

    @implementation("attention_varlen")
    def attention_varlen(self, inp: ops.VarlenInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """VLEN-1: the tiled forward per sequence, on ``[1, H, S_b, D]`` views of the packed tensors, so no
        tile ever spans two sequences (the tiles of other sequences are never visited)."""
        q = inp.q
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output((q.shape[1], q.shape[0]), wide_dtype(q.dtype), q.device)
        for rows, keys in inp.sequences:
            forward_into(_dense(out[rows]), lse[:, rows][None], _dense(q[rows]), _dense(inp.k[keys]),
                         _dense(inp.v[keys]), inp.causal, inp.scale, inp.variants, self.tiles)
        return out, lse

    @implementation("attention_varlen_backward")
    def attention_varlen_backward(self, inp: ops.VarlenBackwardInputs) -> tuple[torch.Tensor, ...]:
        """VLEN-4: the tiled backward per sequence, on views of the packed tensors."""
        dq, dk, dv = (new_output(x.shape, x.dtype, x.device) for x in (inp.q, inp.k, inp.v))
        for rows, keys in inp.sequences:
            grads = Grads(_dense(dq[rows]), _dense(dk[keys]), _dense(dv[keys]))
            backward_into(grads, _dense(inp.q[rows]), _dense(inp.k[keys]), _dense(inp.v[keys]), _dense(inp.out[rows]),
                          inp.lse[:, rows][None], _dense(inp.dout[rows]), inp.causal, inp.scale, inp.variants,
                          self.tiles)
        return dq, dk, dv

    @implementation("attention_decode_paged")
    def attention_decode_paged(self, inp: ops.DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """DEC-1..3: split-KV over the pages, partials merged by the softmax-statistics algebra
        (``tiled_decode``); ``num_splits=None`` takes ``min(4, pages)`` splits."""
        q = inp.q
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        decode_into(out, lse, inp)
        return out, lse

    @implementation("attention_fp8")
    def attention_fp8(self, inp: ops.Fp8Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """FP8-1: the tiled forward in float32 on ``descale · x`` (each input dequantized once); out bfloat16."""
        q, k, v = (x.to(torch.float32) * d for x, d in ((inp.q, inp.q_descale), (inp.k, inp.k_descale),
                                                         (inp.v, inp.v_descale)))
        out = new_output(q.shape, torch.bfloat16, q.device)
        lse = new_output(q.shape[:3], torch.float32, q.device)
        forward_into(out, lse, q, k, v, inp.causal, inp.scale, PLAIN, self.tiles)
        return out, lse

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
        return stats_outputs(m, l, wide_dtype(x.dtype), x.device)

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``m = max(m1, m2)``, ``l = l1·e^(m1-m) + l2·e^(m2-m)``, computed in the arithmetic dtype."""
        m1, l1, m2, l2 = inp.m1, inp.l1, inp.m2, inp.l2
        dtype = wide_dtype(m1.dtype)
        m, l = merge_stats(as_numpy(m1, dtype), as_numpy(l1, dtype), as_numpy(m2, dtype), as_numpy(l2, dtype))
        return stats_outputs(m, l, m1.dtype, m1.device)

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


def _dense(x: torch.Tensor) -> torch.Tensor:
    """One sequence's packed rows ``[S, H, D]`` seen as a batch of one, ``[1, H, S, D]`` (a view)."""
    return x.transpose(0, 1)[None]


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
