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
    stats_outputs,
    visible,
    write,
)
from implementations.base import Backend, Capabilities, CausalVariant, causal_offset, new_output, wide_dtype
from implementations.ops import implementation
from implementations.variants import ATTENTION_VARIANTS, PLAIN, Variants

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
F64 = torch.float64


class ReferenceBackend(Backend):
    """NumPy float64, materialising: the readable definition of every operation (the oracle)."""

    name = "reference"
    description = "NumPy float64, materialising: the readable definition of every operation (the oracle)"
    capabilities = Capabilities(
        devices=("cpu",), dtypes=ALL_DTYPES, backward_dtypes=ALL_DTYPES, head_dims=(1, 1024), memory="quadratic",
        saves="scores", deterministic=True,
        stats_dtypes=ALL_DTYPES, kd_dtypes=(torch.float32, torch.float64),
        reduce_dtypes=(torch.float32,), reduce_schedule="sequential",
        attention_variants=frozenset(ATTENTION_VARIANTS), varlen_dtypes=ALL_DTYPES, varlen_backward_dtypes=ALL_DTYPES,
        decode_dtypes=ALL_DTYPES, fp8_dtypes=(torch.float8_e4m3fn,),
        notes=(
            "computes in float64 whatever the input dtype",
            "backward recomputes P from q, k in float64; out and lse are checked, not used",
        ),
    )

    # -- attention --------------------------------------------------------------------------------

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """ATT-1..4, VAR: ``out = softmax(S) V`` and ``lse = logsumexp(S)`` with ``S`` of :func:`_scores`."""
        q = inp.q
        out64, lse64 = _forward(as_numpy(q, F64), as_numpy(inp.k, F64), as_numpy(inp.v, F64), inp.causal,
                                inp.scale, inp.variants)
        out = new_output(q.shape, q.dtype, q.device)
        write(out, out64)
        lse = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        write(lse, lse64)
        return out, lse

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1/4/5, VAR: the analytic gradients of attention (:func:`_backward`).

        ``P`` is recomputed from ``q, k`` in float64 rather than read from ``lse``, and ``delta`` from
        ``P``, ``dP`` rather than from ``out``: the result is the gradient of the exact function whatever
        precision ``out`` and ``lse`` were computed in. ``out`` and ``lse`` are checked, not used.
        """
        q, k, v = inp.q, inp.k, inp.v
        grads = _backward(as_numpy(q, F64), as_numpy(k, F64), as_numpy(v, F64), as_numpy(inp.dout, F64),
                          inp.causal, inp.scale, inp.variants)
        return _write_grads(q, k, v, grads)

    # -- attention variants: packed sequences, paged decode, fp8 ----------------------------------------

    @implementation("attention_varlen")
    def attention_varlen(self, inp: ops.VarlenInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """VLEN-1: each sequence's rows attended on their own, as dense attention of a batch of one."""
        q = inp.q
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output((q.shape[1], q.shape[0]), wide_dtype(q.dtype), q.device)
        for rows, keys in inp.sequences:
            o64, l64 = _forward(*(_dense(x) for x in (q[rows], inp.k[keys], inp.v[keys])), inp.causal, inp.scale,
                                inp.variants)
            write(out[rows], o64[0].swapaxes(0, 1))
            write(lse[:, rows], l64[0])
        return out, lse

    @implementation("attention_varlen_backward")
    def attention_varlen_backward(self, inp: ops.VarlenBackwardInputs) -> tuple[torch.Tensor, ...]:
        """VLEN-4: each sequence's gradients are its own dense attention's (:func:`_backward`)."""
        q, k, v = inp.q, inp.k, inp.v
        dq, dk, dv = (new_output(x.shape, x.dtype, x.device) for x in (q, k, v))
        for rows, keys in inp.sequences:
            grads = _backward(*(_dense(x) for x in (q[rows], k[keys], v[keys], inp.dout[rows])), inp.causal,
                              inp.scale, inp.variants)
            for dst, g in zip((dq[rows], dk[keys], dv[keys]), grads):
                write(dst, g[0].swapaxes(0, 1))
        return dq, dk, dv

    @implementation("attention_decode_paged")
    def attention_decode_paged(self, inp: ops.DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """DEC-1: each sequence's keys gathered from its pages, then dense bottom-right causal attention
        (query ``i`` of ``Sq`` sees keys ``j <= kv_len - Sq + i``); ``num_splits`` is accepted and ignored."""
        q = inp.q
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        for b, length in enumerate(inp.lengths):
            pages = inp.block_table[b, : -(-length // inp.page_size)].long()
            k, v = (x[pages].flatten(0, 1)[:length] for x in (inp.k_pages, inp.v_pages))
            o64, l64 = _forward(as_numpy(q[b:b + 1], F64), _dense(k), _dense(v), "bottom_right", inp.scale)
            write(out[b], o64[0])
            write(lse[b], l64[0])
        return out, lse

    @implementation("attention_fp8")
    def attention_fp8(self, inp: ops.Fp8Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """FP8-1: attention on the dequantized inputs ``descale · x`` in float64; out bfloat16, lse float32."""
        q = inp.q
        q64, k64, v64 = (as_numpy(x, F64) * float(d) for x, d in ((q, inp.q_descale), (inp.k, inp.k_descale),
                                                                   (inp.v, inp.v_descale)))
        out64, lse64 = _forward(q64, k64, v64, inp.causal, inp.scale)
        out = new_output(q.shape, torch.bfloat16, q.device)
        write(out, out64)
        lse = new_output(q.shape[:3], torch.float32, q.device)
        write(lse, lse64)
        return out, lse

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
        return stats_outputs(m, l, wide_dtype(x.dtype), x.device)

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``m = max(m1, m2)``, ``l = l1·e^(m1-m) + l2·e^(m2-m)``, in the inputs' dtype."""
        m1, l1, m2, l2 = inp.m1, inp.l1, inp.m2, inp.l2
        m, l = merge_stats(as_numpy(m1, F64), as_numpy(l1, F64), as_numpy(m2, F64), as_numpy(l2, F64))
        return stats_outputs(m, l, m1.dtype, m1.device)

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


def _dense(x: torch.Tensor) -> np.ndarray:
    """One sequence's packed rows ``[S, H, D]`` as a float64 batch of one, ``[1, H, S, D]``."""
    return as_numpy(x, F64).swapaxes(0, 1)[None]


def _logits(q: np.ndarray, k: np.ndarray, scale: float, variants: Variants) -> tuple[np.ndarray, np.ndarray | None]:
    """``s = scale · Q Kᵀ`` capped (``cap · tanh(s / cap)``), plus bias and ALiBi (SPEC VAR), ``[B, Hq, Sq, Sk]``;
    and ``ds_final / ds`` of the cap, ``1 - tanh²(s / cap)`` (None without a cap)."""
    s = scale * (q @ k.swapaxes(-1, -2))
    slope = None
    if variants.softcap is not None:
        t = np.tanh(s / variants.softcap)
        s, slope = variants.softcap * t, 1.0 - t * t
    if variants.bias is not None:
        bias = variants.bias.detach().cpu()
        s = s + (np.where(bias.numpy(), 0.0, -np.inf) if bias.dtype == torch.bool else as_numpy(bias, F64))
    if variants.alibi_slopes is not None:
        Sq, Sk = s.shape[-2:]
        distance = np.abs(np.arange(Sq)[:, None] + Sk - Sq - np.arange(Sk)[None, :])
        s = s - as_numpy(variants.alibi_slopes.cpu(), F64)[:, None, None] * distance
    return s, slope


def _scores(q: np.ndarray, k: np.ndarray, causal: CausalVariant | None, scale: float,
            variants: Variants) -> tuple[np.ndarray, np.ndarray | None]:
    """The logits of :func:`_logits` with ``-inf`` where key j is invisible to query i: causal (ATT-3) and
    window ``i + Sk - Sq - left <= j <= i + Sk - Sq + right`` (VAR-1); and the cap's derivative."""
    scores, slope = _logits(q, k, scale, variants)
    Sq, Sk = scores.shape[-2:]
    i, j = np.arange(Sq)[:, None], np.arange(Sk)[None, :]
    hidden = np.zeros((Sq, Sk), dtype=bool)
    offset = causal_offset(causal, Sq, Sk)
    if offset is not None:
        hidden |= ~visible(np.arange(Sq), np.arange(Sk), offset)
    left, right = variants.window or (-1, -1)
    if left >= 0:
        hidden |= j < i + Sk - Sq - left
    if right >= 0:
        hidden |= j > i + Sk - Sq + right
    scores[..., hidden] = -np.inf
    return scores, slope


def _forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: CausalVariant | None, scale: float,
             variants: Variants = PLAIN) -> tuple[np.ndarray, np.ndarray]:
    """``out = softmax(S) V``, ``lse = logsumexp(S)`` in float64, ``S`` of :func:`_scores` (GQA: ATT-6)."""
    Hq = q.shape[1]
    scores, _ = _scores(q, _per_query_head(k, Hq), causal, scale, variants)
    p, lse = _softmax(scores)
    return p @ _per_query_head(v, Hq), lse


def _backward(q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, causal: CausalVariant | None,
              scale: float, variants: Variants) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The analytic gradients in float64: ``P = softmax(S)``, ``dV = Pᵀ dO``, ``dP = dO Vᵀ``,
    ``dS = P ∘ (dP - delta)`` with ``delta = rowsum(P ∘ dP)`` (GRAD-3), times ``1 - tanh²(s / cap)`` under a
    softcap (VAR-2); ``dQ = scale · dS K``, ``dK = scale · dSᵀ Q``; with GQA the ``dK``, ``dV`` of the query
    heads sharing a KV head are summed (GRAD-4). The bias and ALiBi are constants."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    k64, v64 = _per_query_head(k, Hq), _per_query_head(v, Hq)
    scores, slope = _scores(q, k64, causal, scale, variants)
    p, _ = _softmax(scores)
    dp = dout @ v64.swapaxes(-1, -2)
    ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
    if slope is not None:
        ds = ds * slope
    dk = (scale * ds.swapaxes(-1, -2) @ q).reshape(B, Hk, Hq // Hk, Sk, D).sum(axis=2)
    dv = (p.swapaxes(-1, -2) @ dout).reshape(B, Hk, Hq // Hk, Sk, D).sum(axis=2)
    return scale * ds @ k64, dk, dv


def _write_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 grads: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` as outputs shaped and typed like ``q, k, v``."""
    outs = tuple(new_output(x.shape, x.dtype, x.device) for x in (q, k, v))
    for dst, g in zip(outs, grads):
        write(dst, g)
    return outs  # type: ignore[return-value]


def _softmax(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row softmax ``P`` and ``lse`` of ``scores``; a fully masked row, or one with no key at all (a sequence
    of zero keys, VLEN-3), gives ``P = 0``, ``lse = -inf`` (ATT-4)."""
    m = scores.max(axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(scores - finite_or_zero(m))
    l = e.sum(axis=-1, keepdims=True)
    p = np.divide(e, l, out=np.zeros_like(e), where=l > 0)
    return p, (m + log_or_neg_inf(l))[..., 0]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row ``log softmax(z) = (z - m) - log Σ exp(z - m)`` of ``[N, V]`` logits, ``m`` the row max."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
