"""FlashAttention-2's tile loops in NumPy, the attention core of the ``reference-tiled`` backend.

- :func:`forward_into`: FlashAttention-2's forward (Dao 2023, Algorithm 1). For each block of ``block_m`` query
  rows, walk the key blocks of ``block_n`` columns keeping a running row max ``m``, a running sum ``l`` and an
  unnormalised output accumulator, rescaled by ``exp(m_old - m_new)`` whenever the max grows; divide by ``l``
  at the end and keep ``lse = m + log l``.
- :func:`backward_into`: recomputation from ``lse`` (GRAD-2): ``delta = rowsum(dO ∘ O)`` in its own pass, then
  for each key block, over the query blocks that see it: ``P = exp(S - lse)``, ``dV += Pᵀ dO``,
  ``dP = dO Vᵀ``, ``dS = P ∘ (dP - delta)``, ``dK += dSᵀ Q``, ``dQ += dS K`` (both times ``scale``).

Both take torch tensors or views of them (a sequence of a packed batch is a strided ``[1, H, S, D]`` view) and
write their results into the given outputs. The variants (SPEC VAR) act on each tile: the softcap and the
tile's slice of the bias and ALiBi; key blocks outside every row's visible range (causal and window) are
skipped, the others masked only where a row's range ends inside them.

Arithmetic is float32 for float16 / bfloat16 / float32 inputs and float64 for float64 inputs. Blocks are
``[B, Hk, G·rows, D]`` arrays, the ``G = Hq / Hk`` query heads of a KV head stacked as extra rows, so that GQA
reads each K, V block once without copying K, V per query head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from implementations._numpy import as_numpy, finite_or_zero, log_or_neg_inf, numpy_dtype, write
from implementations.base import CausalVariant, causal_offset, wide_dtype
from implementations.variants import Variants, window_key_range


@dataclass(frozen=True)
class Tiling:
    """One dense problem's shape, visible key ranges and logit modifiers, as tiles see them."""

    B: int
    Hk: int
    G: int
    Sq: int
    Sk: int
    scale: float
    variants: Variants
    #: the first and last visible key of every query row (causal and window; ``lo > hi``: none)
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, causal: CausalVariant | None, scale: float,
           variants: Variants) -> Tiling:
        B, Hq, Sq, _ = q.shape
        Hk, Sk = k.shape[1], k.shape[2]
        lo, hi = window_key_range(np.arange(Sq), Sq, Sk, causal_offset(causal, Sq, Sk), variants.window)
        return cls(B, Hk, Hq // Hk, Sq, Sk, scale, variants, lo, hi)

    def key_blocks(self, i0: int, i1: int, block_n: int) -> range:
        """Starts of the key blocks any of the rows ``i0:i1`` sees (the ranges grow with the row)."""
        lo, hi = int(self.lo[i0]), int(self.hi[i1 - 1])
        return range(lo // block_n * block_n, hi + 1, block_n) if hi >= lo else range(0)

    def query_blocks(self, j0: int, j1: int, block_m: int) -> range:
        """Starts of the query blocks with a row that sees one of the keys ``j0:j1``."""
        first = int(np.searchsorted(self.hi, j0))  # first row whose range reaches j0
        stop = int(np.searchsorted(self.lo, j1))  # rows from here on start after the block
        rows = first + np.flatnonzero(self.lo[first:stop] <= self.hi[first:stop])
        return range(int(rows[0]) // block_m * block_m, int(rows[-1]) + 1, block_m) if rows.size else range(0)

    def scores(self, q_i: np.ndarray, k_j: np.ndarray, rows: tuple[int, int],
               cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """One tile ``S = scale · Q_i K_jᵀ`` ``[B, Hk, G·m, n]``, capped, plus its bias and ALiBi slices, with
        ``-inf`` at invisible keys; and ``1 - tanh²(s / cap)`` under a softcap (the backward's chain rule)."""
        (i0, i1), (j0, j1) = rows, cols
        s = q_i @ k_j.swapaxes(-1, -2)
        s *= self.scale
        slope = None
        if self.variants.softcap is not None:
            t = np.tanh(s / self.variants.softcap)
            s, slope = self.variants.softcap * t, 1.0 - t * t
        s5 = s.reshape(self.B, self.Hk, self.G, i1 - i0, j1 - j0)
        s5 += self._additive(rows, cols, s.dtype)
        lo, hi = self.lo[i0:i1, None], self.hi[i0:i1, None]
        if (lo > j0).any() or (hi < j1 - 1).any():
            j = np.arange(j0, j1)[None, :]
            s5[..., (j < lo) | (j > hi)] = -np.inf
        return s, slope

    def _additive(self, rows: tuple[int, int], cols: tuple[int, int], dtype: np.dtype) -> np.ndarray | float:
        """The tile's bias (a bool mask as 0 / -inf) plus ALiBi, broadcastable to ``[B, Hk, G, m, n]``."""
        (i0, i1), (j0, j1) = rows, cols
        total: np.ndarray | float = 0.0
        bias = self.variants.bias
        if bias is not None:
            full = torch.broadcast_to(bias, (self.B, self.Hk * self.G, self.Sq, self.Sk))[:, :, i0:i1, j0:j1]
            tile = (np.where(full.cpu().numpy(), 0.0, -np.inf).astype(dtype) if bias.dtype == torch.bool
                    else as_numpy(full.cpu(), torch.float64).astype(dtype))
            total = total + tile.reshape(self.B, self.Hk, self.G, i1 - i0, j1 - j0)
        slopes = self.variants.alibi_slopes
        if slopes is not None:
            i, j = np.arange(i0, i1)[:, None], np.arange(j0, j1)[None, :]
            distance = np.abs(i + self.Sk - self.Sq - j).astype(dtype)
            per_head = as_numpy(slopes.cpu(), torch.float64).astype(dtype).reshape(self.Hk, self.G, 1, 1)
            total = total - per_head * distance
        return total


def grouped(x: torch.Tensor, Hk: int) -> torch.Tensor:
    """View ``[B, Hq, ...]`` as ``[B, Hk, G, ...]``: query head ``h`` is KV head ``h // G``'s member ``h % G``."""
    return x.unflatten(1, (Hk, x.shape[1] // Hk))


def query_rows(x: torch.Tensor, i0: int, i1: int, dtype: torch.dtype) -> np.ndarray:
    """Rows ``i0:i1`` of a grouped ``[B, Hk, G, S, ...]`` tensor as a ``[B, Hk, G·(i1-i0), ...]`` array.

    A copy, except where NumPy can reshape the slice in place (``G = 1``, dtype unchanged): read-only use.
    """
    rows = as_numpy(x[:, :, :, i0:i1], dtype)
    return rows.reshape(rows.shape[0], rows.shape[1], -1, *rows.shape[4:])


@dataclass
class OnlineSoftmax:
    """The running ``(m, l, acc)`` of one block of query rows (FlashAttention-2's forward state)."""

    m: np.ndarray
    l: np.ndarray
    acc: np.ndarray

    @classmethod
    def empty(cls, q_i: np.ndarray) -> OnlineSoftmax:
        m = np.full(q_i.shape[:-1], -np.inf, dtype=q_i.dtype)
        return cls(m, np.zeros_like(m), np.zeros_like(q_i))

    def add(self, s: np.ndarray, v_j: np.ndarray) -> None:
        """``m_new = max(m, rowmax S)``, ``P = exp(S - m_new)``, ``l = e^(m - m_new) l + rowsum P``,
        ``acc = e^(m - m_new) acc + P V_j``."""
        m_new = np.maximum(self.m, s.max(axis=-1))
        ref = finite_or_zero(m_new)
        p = np.exp(s - ref[..., None])
        rescale = np.exp(self.m - ref)
        self.l = rescale * self.l + p.sum(axis=-1)
        self.acc = rescale[..., None] * self.acc + p @ v_j
        self.m = m_new

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``out = acc / l`` and ``lse = m + log l``; a row that saw no key gets out 0, lse -inf (ATT-4)."""
        out = np.divide(self.acc, self.l[..., None], out=np.zeros_like(self.acc), where=self.l[..., None] > 0)
        return out, self.m + log_or_neg_inf(self.l)


def forward_into(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 causal: CausalVariant | None, scale: float, variants: Variants, tiles: tuple[int, int]) -> None:
    """FlashAttention-2's forward of ``q [B, Hq, Sq, D]`` over ``k, v [B, Hk, Sk, D]`` into ``out``, ``lse``."""
    block_m, block_n = tiles
    t = Tiling.of(q, k, causal, scale, variants)
    dtype = wide_dtype(q.dtype)
    q5, out5, lse4 = grouped(q, t.Hk), grouped(out, t.Hk), grouped(lse, t.Hk)
    for i0 in range(0, t.Sq, block_m):
        i1 = min(i0 + block_m, t.Sq)
        q_i = query_rows(q5, i0, i1, dtype)
        state = OnlineSoftmax.empty(q_i)
        for j0 in t.key_blocks(i0, i1, block_n):
            j1 = min(j0 + block_n, t.Sk)
            s, _ = t.scores(q_i, as_numpy(k[:, :, j0:j1], dtype), (i0, i1), (j0, j1))
            state.add(s, as_numpy(v[:, :, j0:j1], dtype))
        o_i, lse_i = state.result()
        write(out5[:, :, :, i0:i1], o_i.reshape(t.B, t.Hk, t.G, i1 - i0, -1))
        write(lse4[:, :, :, i0:i1], lse_i.reshape(t.B, t.Hk, t.G, i1 - i0))


def row_delta(out: torch.Tensor, dout: torch.Tensor, block_m: int) -> np.ndarray:
    """``rowsum(dout ∘ out)`` ``[B, Hq, Sq]`` in the arithmetic dtype, by blocks of ``block_m`` rows (GRAD-3)."""
    dtype = wide_dtype(out.dtype)
    Sq = out.shape[2]
    delta = np.empty(out.shape[:3], dtype=numpy_dtype(dtype))
    for i0 in range(0, Sq, block_m):
        i1 = min(i0 + block_m, Sq)
        o_i, do_i = as_numpy(out[:, :, i0:i1], dtype), as_numpy(dout[:, :, i0:i1], dtype)
        delta[:, :, i0:i1] = np.sum(do_i * o_i, axis=-1)
    return delta


@dataclass(frozen=True)
class Grads:
    """The outputs ``dq, dk, dv`` of one dense problem (or views of packed ones) the backward writes."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor


def backward_into(grads: Grads, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, dout: torch.Tensor, causal: CausalVariant | None, scale: float,
                  variants: Variants, tiles: tuple[int, int]) -> None:
    """FlashAttention-2's backward into ``grads``: for each key block ``j``, over the query blocks ``i`` that see
    it, ``dV_j += P_ijᵀ dO_i``, ``dP = dO_i V_jᵀ``, ``dS = P_ij ∘ (dP - delta_i)`` (times ``1 - tanh²`` under a
    softcap), ``dK_j += dSᵀ Q_i``, ``dQ_i += dS K_j``; ``dK`` and ``dQ`` times ``scale`` at the end. With GQA the
    group's query heads are rows of one block, so ``dK_j``, ``dV_j`` sum over them (GRAD-4). A row with
    ``lse = -inf`` sees no key: its ``P`` is 0 and its ``dQ`` row 0 (GRAD-5)."""
    block_m, block_n = tiles
    t = Tiling.of(q, k, causal, scale, variants)
    dtype = wide_dtype(q.dtype)
    delta4 = grouped(torch.from_numpy(row_delta(out, dout, block_m)), t.Hk)
    q5, dout5, lse4 = grouped(q, t.Hk), grouped(dout, t.Hk), grouped(lse, t.Hk)
    dq_acc = np.zeros((t.B, t.Hk, t.G, t.Sq, q.shape[3]), dtype=numpy_dtype(dtype))
    for j0 in range(0, t.Sk, block_n):
        j1 = min(j0 + block_n, t.Sk)
        k_j, v_j = as_numpy(k[:, :, j0:j1], dtype), as_numpy(v[:, :, j0:j1], dtype)
        dk_j, dv_j = np.zeros(k_j.shape, dtype=k_j.dtype), np.zeros(v_j.shape, dtype=k_j.dtype)
        for i0 in t.query_blocks(j0, j1, block_m):
            i1 = min(i0 + block_m, t.Sq)
            q_i, do_i = query_rows(q5, i0, i1, dtype), query_rows(dout5, i0, i1, dtype)
            # lse = -inf marks a row without visible keys; +inf there makes exp(S - lse) = 0, not NaN.
            lse_i = query_rows(lse4, i0, i1, dtype)
            lse_i = np.where(np.isneginf(lse_i), np.inf, lse_i)
            s, slope = t.scores(q_i, k_j, (i0, i1), (j0, j1))
            p = np.exp(s - lse_i[..., None])
            dv_j += p.swapaxes(-1, -2) @ do_i
            ds = p * (do_i @ v_j.swapaxes(-1, -2) - query_rows(delta4, i0, i1, dtype)[..., None])
            if slope is not None:
                ds *= slope
            dk_j += ds.swapaxes(-1, -2) @ q_i
            dq_acc[:, :, :, i0:i1] += (ds @ k_j).reshape(t.B, t.Hk, t.G, i1 - i0, -1)
        write(grads.dk[:, :, j0:j1], scale * dk_j)
        write(grads.dv[:, :, j0:j1], dv_j)
    dq_acc *= scale
    write(grads.dq, dq_acc.reshape(grads.dq.shape))
