"""The reference backend: every operation of the contract, written out in NumPy float64 for clarity.

This is the readable definition the suite's oracle follows (SPEC: "the oracle is the reference computed in
float64 on the CPU"). It materialises everything (the ``[B, Hq, Sq, Sk]`` scores and probabilities, the
full ``[N, V]`` softmaxes of the KD loss) and favours plain formulas over speed or memory. Inputs of any
declared dtype are converted to float64; outputs are returned in the input's dtype (``lse``, statistics and
``delta`` in float32, or float64 for float64 inputs, as the contract says).
"""

from __future__ import annotations

import numpy as np
import torch

from implementations import ops, schedule
from implementations._numpy import (
    as_numpy,
    finite_or_zero,
    log_or_neg_inf,
    merge_stats,
    visible,
    write,
)
from implementations.base import Backend, Capabilities, CausalVariant, causal_offset, new_output, wide_dtype
from implementations.ops import implementation

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
F64 = torch.float64


class ReferenceBackend(Backend):
    """NumPy float64, materialising: the readable definition of every operation (the oracle)."""

    name = "reference"
    description = "NumPy float64, materialising: the readable definition of every operation (the oracle)"
    capabilities = Capabilities(
        devices=("cpu",),
        dtypes=ALL_DTYPES,
        backward_dtypes=ALL_DTYPES,
        head_dims=(1, 1024),
        memory="quadratic",
        saves="scores",
        deterministic=True,
        stats_dtypes=ALL_DTYPES,
        kd_dtypes=(torch.float32, torch.float64),
        reduce_dtypes=(torch.float32,),
        reduce_schedule="sequential",
        notes=(
            "computes in float64 whatever the input dtype",
            "backward recomputes P from q, k in float64; out and lse are checked, not used",
        ),
    )

    # -- attention --------------------------------------------------------------------------------

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """ATT-1..4: ``out = softmax(scale · Q Kᵀ, masked) V`` and ``lse = logsumexp(scale · Q Kᵀ, masked)``."""
        q, k, v = inp.q, inp.k, inp.v
        Hq = q.shape[1]
        scores = _scores(as_numpy(q, F64), _per_query_head(as_numpy(k, F64), Hq), inp.causal, inp.scale)
        p, lse = _softmax(scores)
        out = new_output(q.shape, q.dtype, q.device)
        write(out, p @ _per_query_head(as_numpy(v, F64), Hq))
        lse_out = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        write(lse_out, lse)
        return out, lse_out

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1/4/5: the analytic gradients of attention.

        ``P = softmax(S)``, ``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``dS = P ∘ (dP - delta)`` with
        ``delta = rowsum(P ∘ dP)`` (GRAD-3), ``dQ = scale · dS K``, ``dK = scale · dSᵀ Q``; with GQA the
        ``dK``, ``dV`` of the query heads sharing a KV head are summed (GRAD-4).

        ``P`` is recomputed from ``q, k`` in float64 rather than read from ``lse``, and ``delta`` from
        ``P``, ``dP`` rather than from ``out``: the result is the gradient of the exact function whatever
        precision ``out`` and ``lse`` were computed in. ``out`` and ``lse`` are checked, not used.
        """
        q, k, v, dout, variant, scale = inp.q, inp.k, inp.v, inp.dout, inp.causal, inp.scale
        B, Hq, Sq, D = q.shape
        Hk, Sk = k.shape[1], k.shape[2]
        q64, do64 = as_numpy(q, F64), as_numpy(dout, F64)
        k64, v64 = _per_query_head(as_numpy(k, F64), Hq), _per_query_head(as_numpy(v, F64), Hq)

        p, _ = _softmax(_scores(q64, k64, variant, scale))
        dp = do64 @ v64.swapaxes(-1, -2)
        delta = np.sum(p * dp, axis=-1, keepdims=True)
        ds = p * (dp - delta)
        dq64 = scale * ds @ k64
        dk64 = scale * ds.swapaxes(-1, -2) @ q64
        dv64 = p.swapaxes(-1, -2) @ do64

        dq = new_output(q.shape, q.dtype, q.device)
        dk = new_output(k.shape, k.dtype, k.device)
        dv = new_output(v.shape, v.dtype, v.device)
        write(dq, dq64)
        write(dk, dk64.reshape(B, Hk, Hq // Hk, Sk, D).sum(axis=2))  # GRAD-4: sum over each group
        write(dv, dv64.reshape(B, Hk, Hq // Hk, Sk, D).sum(axis=2))
        return dq, dk, dv

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """GRAD-3: ``delta = rowsum(dout ∘ out)``, shape ``[B, Hq, Sq]``."""
        out, dout = inp.out, inp.dout
        delta = new_output(out.shape[:3], wide_dtype(out.dtype), out.device)
        write(delta, np.sum(as_numpy(dout, F64) * as_numpy(out, F64), axis=-1))
        return delta

    # -- softmax statistics -----------------------------------------------------------------------

    @implementation("softmax_stats")
    def softmax_stats(self, inp: ops.StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-1 in one shot: ``m = max x``, ``l = Σ exp(x - m)`` per row; ``block`` is accepted and ignored.

        A row of all -inf gives ``m = -inf``, ``l = 0`` (SMX-5).
        """
        x = inp.x
        x64 = as_numpy(x, F64)
        m = x64.max(axis=1)
        l = np.exp(x64 - finite_or_zero(m)[:, None]).sum(axis=1)
        m_out = new_output(m.shape, wide_dtype(x.dtype), x.device)
        l_out = new_output(l.shape, wide_dtype(x.dtype), x.device)
        write(m_out, m)
        write(l_out, l)
        return m_out, l_out

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``m = max(m1, m2)``, ``l = l1·e^(m1-m) + l2·e^(m2-m)``, in the inputs' dtype."""
        m1, l1, m2, l2 = inp.m1, inp.l1, inp.m2, inp.l2
        m, l = merge_stats(as_numpy(m1, F64), as_numpy(l1, F64), as_numpy(m2, F64), as_numpy(l2, F64))
        m_out = new_output(m1.shape, m1.dtype, m1.device)
        l_out = new_output(m1.shape, m1.dtype, m1.device)
        write(m_out, m)
        write(l_out, l)
        return m_out, l_out

    # -- knowledge distillation -------------------------------------------------------------------

    @implementation("kd_loss")
    def kd_loss(self, inp: ops.KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """KD-1/2, unfused: full ``[N, V]`` softmaxes in float64.

        Per row: ``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)``, averaged over rows whose
        label is not ``ignore_index``. Gradient per counted row, divided by their number:
        ``α·T·(softmax(s/T) - softmax(t/T)) + (1-α)·(softmax(s) - onehot(y))``; other rows get 0.
        """
        y, alpha, T, ignore_index = inp.labels, inp.alpha, inp.temperature, inp.ignore_index
        s64, t64 = as_numpy(inp.s, F64), as_numpy(inp.t, F64)
        N, V = s64.shape
        counted = np.ones(N, dtype=bool) if y is None else y.numpy() != ignore_index
        n_counted = int(counted.sum())

        log_ps, log_pt = _log_softmax(s64 / T), _log_softmax(t64 / T)
        ps, pt = np.exp(log_ps), np.exp(log_pt)
        kl = np.where(pt > 0, pt * (log_pt - log_ps), 0.0).sum(axis=1)  # 0 · log 0 = 0
        row_loss = alpha * T * T * kl
        row_grad = alpha * T * (ps - pt)
        if y is not None and alpha < 1:
            rows = np.flatnonzero(counted)
            labels_np = y.numpy()[rows]
            log_p1 = _log_softmax(s64)
            row_loss[rows] += (1 - alpha) * -log_p1[rows, labels_np]
            onehot = np.zeros((N, V))
            onehot[rows, labels_np] = 1.0
            row_grad += (1 - alpha) * (np.exp(log_p1) - onehot)

        weight = counted / max(n_counted, 1)  # 1/n for counted rows, 0 for ignored ones
        loss = new_output((), wide_dtype(inp.s.dtype), inp.s.device)
        loss.fill_(float(row_loss[counted].sum() / n_counted) if n_counted else 0.0)
        ds = new_output(inp.shape, inp.s.dtype, inp.s.device)
        write(ds.view(N, V), row_grad * weight[:, None])
        return loss, ds

    # -- reduction --------------------------------------------------------------------------------

    @implementation("reduce_sum")
    def reduce_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, schedule.DeferredSchedule]:
        """WD-1/2: ``((x0 + x1) + x2) + ...`` in float32, the declared ``schedule.sequential(n)``."""
        x = inp.x
        # add.accumulate is the running sum out[i] = out[i-1] + x[i], one float32 rounding per addition,
        # strictly left to right (unlike np.sum, which adds pairwise).
        partial_sums = np.add.accumulate(as_numpy(x, torch.float32))
        value = new_output((), torch.float32, x.device)
        value.fill_(float(partial_sums[-1]))
        n = x.numel()
        return value, schedule.DeferredSchedule(n, lambda: schedule.sequential(n))

    @implementation("prefix_sum")
    def prefix_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, schedule.ScanSchedule]:
        """WD-5: ``y[i] = y[i-1] + x[i]`` in float32, left to right, the declared ``sequential_scan(n)``."""
        x = inp.x
        y = new_output(x.shape, torch.float32, x.device)
        write(y, np.add.accumulate(as_numpy(x, torch.float32)))
        return y, schedule.sequential_scan(x.numel())


def _per_query_head(kv: np.ndarray, Hq: int) -> np.ndarray:
    """ATT-6: K or V ``[B, Hk, Sk, D]`` repeated so that query head ``h`` finds KV head ``h // (Hq // Hk)``."""
    return np.repeat(kv, Hq // kv.shape[1], axis=1)


def _scores(q: np.ndarray, k: np.ndarray, causal: CausalVariant | None, scale: float) -> np.ndarray:
    """``S = scale · Q Kᵀ`` ``[B, Hq, Sq, Sk]``, with ``-inf`` where key j is invisible to query i (ATT-3)."""
    scores = scale * (q @ k.swapaxes(-1, -2))
    Sq, Sk = scores.shape[-2:]
    offset = causal_offset(causal, Sq, Sk)
    if offset is not None:
        scores[..., ~visible(np.arange(Sq), np.arange(Sk), offset)] = -np.inf
    return scores


def _softmax(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row softmax ``P`` and ``lse`` of ``scores``; a fully masked row gives ``P = 0``, ``lse = -inf`` (ATT-4)."""
    m = scores.max(axis=-1, keepdims=True)
    e = np.exp(scores - finite_or_zero(m))
    l = e.sum(axis=-1, keepdims=True)
    p = np.divide(e, l, out=np.zeros_like(e), where=l > 0)
    return p, (m + log_or_neg_inf(l))[..., 0]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row ``log softmax(z) = (z - m) - log Σ exp(z - m)`` of ``[N, V]`` logits, ``m`` the row max."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
