"""Correct backends written differently from the oracle: what the suite must never fail.

Each :class:`Honest` backend computes in one of these formulations:

- ``"oracle"``: the oracle's own formulas (the operations' ``materialised`` and ``naive``) evaluated in the
  working dtype: float32 for float32 inputs, float64 for float64; attention in the input dtype itself (matrix
  products in float16 / bfloat16, softmax in float32);
- ``"online"``: the attention forward and the softmax statistics as an online softmax over blocks of keys
  (FlashAttention's running max, sum and rescaled accumulator), the KD loss with the vocabulary cut into
  chunks merged by a running log-sum-exp, and with entropy and cross-entropy summed apart; float32
  arithmetic for float16 / bfloat16 / float32 inputs (P rounded to the input dtype before P·V), float64
  for float64.

The reductions are the float32 pairwise tree they declare, evaluated bit for bit. The suite's false-alarm
test (``tests/test_false_alarms.py``) drives the conformance clauses themselves over these backends.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from conformance.spec import clause_of
from conformance.trial import Trial
from implementations import schedule as sched
from implementations import validate
from implementations.base import Backend, BackendLike, Capabilities, Case, CausalVariant, new_output
from implementations.ops import attention as attention_op
from implementations.ops import attention_backward as backward_op
from implementations.ops import kd_loss as kd_op
from implementations.ops import softmax_stats as stats_op
from implementations.ops.exact import LOW_PRECISION, stat_dtype

FORMULATIONS = ("oracle", "online")
#: keys (attention) or row elements (statistics, KD vocabulary) per block of the online formulation
BLOCK = 96


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic of a correct kernel: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Honest(Backend):
    """A correct backend in one of :data:`FORMULATIONS`."""

    capabilities = Capabilities(
        devices=("cpu",),
        dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
        backward_dtypes=(torch.float32, torch.float64),
        head_dims=(1, 256),
        causal=("top_left", "bottom_right"),
        causal_default="top_left",
        gqa=True,
        memory="quadratic",
        saves="scores",
        deterministic=True,
        stats_dtypes=(torch.float32, torch.float64),
        kd_dtypes=(torch.float32, torch.float64),
        reduce_dtypes=(torch.float32,),
        reduce_schedule="pairwise tree",
    )

    def __init__(self, formulation: str = "oracle") -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(f"unknown formulation {formulation!r} (known: {FORMULATIONS})")
        self.formulation = formulation
        self.name = f"honest-{formulation}"

    # -- attention ----------------------------------------------------------------------------------

    def attention(self, q, k, v, *, causal=None, scale=None, tiles=None):  # noqa: ANN001, ANN201
        variant, scale = validate.attention_args(self.capabilities, q, k, v, causal=causal, scale=scale, tiles=tiles)
        with torch.no_grad():
            if self.formulation == "oracle":
                o, lse = attention_op.materialised(q, k, v, causal=variant, scale=scale, compute=q.dtype, naive=False)
            else:
                o, lse = _online_attention(q, k, v, variant, scale)
        out = new_output(q.shape, q.dtype, q.device)
        out.copy_(o)
        return out, lse.to(stat_dtype(q.dtype))

    def attention_backward(self, q, k, v, out, lse, dout, *, causal=None, scale=None):  # noqa: ANN001, ANN201
        variant, scale = validate.backward_args(self.capabilities, q, k, v, out, lse, dout, causal=causal,
                                                scale=scale)
        wd = working_dtype(q.dtype)
        grads = backward_op.naive(q, k, v, dout, causal=variant, scale=scale, dtype=wd, naive=False)
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v)))

    # -- softmax statistics -------------------------------------------------------------------------

    def softmax_stats(self, x, *, block=None):  # noqa: ANN001, ANN201
        validate.rows_arg(self.capabilities, "softmax_stats", x)
        xw = x.to(working_dtype(x.dtype))
        if self.formulation == "oracle":
            return stats_op.naive(xw, xw.dtype)
        width = block or BLOCK
        m = torch.full(x.shape[:-1], -math.inf, dtype=xw.dtype)
        l = torch.zeros_like(m)
        for c0 in range(0, x.shape[-1], width):
            m, l = self.softmax_merge(m, l, *stats_op.naive(xw[..., c0:c0 + width], xw.dtype))
        return m, l

    def softmax_merge(self, m1, l1, m2, l2):  # noqa: ANN001, ANN201
        validate.merge_args(self.capabilities, m1, l1, m2, l2)
        m = torch.maximum(m1, m2)
        ref = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        return m, l1 * torch.exp(m1 - ref) + l2 * torch.exp(m2 - ref)

    # -- KD loss ------------------------------------------------------------------------------------

    def kd_loss(self, s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100):  # noqa: ANN001, ANN201
        s2, t2, y, alpha = validate.kd_args(self.capabilities, s, t, temperature=temperature, alpha=alpha,
                                            labels=labels, ignore_index=ignore_index)
        wd = working_dtype(s.dtype)
        if self.formulation == "oracle":
            loss, ds = kd_op.materialised(s, t, temperature=temperature, alpha=alpha, labels=labels,
                                          ignore_index=ignore_index, compute=wd)
        else:
            loss, ds = _chunked_kd(s2.to(wd), t2.to(wd), float(temperature), alpha, y, ignore_index)
        grad = new_output(s.shape, s.dtype, s.device)
        grad.copy_(ds.reshape(s.shape))
        return loss.to(stat_dtype(s.dtype)), grad

    # -- reductions ---------------------------------------------------------------------------------

    def reduce_sum(self, x):  # noqa: ANN001, ANN201
        validate.rows_arg(self.capabilities, "reduce_sum", x)
        tree = sched.pairwise_tree(x.numel())
        return torch.tensor(tree.evaluate(x.numpy(), np.float32), dtype=torch.float32), tree

    def prefix_sum(self, x):  # noqa: ANN001, ANN201
        validate.rows_arg(self.capabilities, "prefix_sum", x)
        scan = sched.hillis_steele_scan(x.numel())
        return torch.from_numpy(scan.evaluate(x.numpy(), np.float32)), scan


def _online_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: CausalVariant | None,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention's forward over blocks of :data:`BLOCK` keys: running max ``m``, running sum ``l``, an
    accumulator rescaled by ``exp(m_old - m_new)``; ``out = acc / l``, ``lse = m + log l``.

    Arithmetic in the working dtype; for float16 / bfloat16 inputs P is rounded to the input dtype before
    the P·V product, as FlashAttention-2 feeds it to the tensor cores."""
    half = q.dtype if q.dtype in LOW_PRECISION else None
    wd = working_dtype(q.dtype)
    group = q.shape[1] // k.shape[1]
    q, k, v = q.to(wd), k.to(wd).repeat_interleave(group, dim=1), v.to(wd).repeat_interleave(group, dim=1)
    Sq, Sk = q.shape[2], k.shape[2]
    visible = attention_op.visibility(Sq, Sk, causal)
    m = torch.full(q.shape[:3], -math.inf, dtype=q.dtype)
    l = torch.zeros_like(m)
    acc = torch.zeros_like(q)
    for j0 in range(0, Sk, BLOCK):
        s = (q @ k[:, :, j0:j0 + BLOCK].transpose(-1, -2)) * scale
        if visible is not None:
            s = s.masked_fill(~visible[:, j0:j0 + BLOCK], -math.inf)
        m_new = torch.maximum(m, s.amax(-1))
        ref = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        p = torch.exp(s - ref[..., None])
        rescale = torch.exp(m - ref)
        l = rescale * l + p.sum(-1)
        p_v = p.to(half).to(wd) if half else p
        acc = rescale[..., None] * acc + p_v @ v[:, :, j0:j0 + BLOCK]
        m = m_new
    seen = l > 0
    out = torch.where(seen[..., None], acc / torch.where(seen, l, 1.0)[..., None], 0.0)
    lse = torch.where(seen, m + torch.log(torch.where(seen, l, 1.0)), -math.inf)
    return out, lse


def _chunked_lse(z: torch.Tensor) -> torch.Tensor:
    """Row log-sum-exp of ``z`` over vocabulary chunks of :data:`BLOCK`, merged by a running (max, sum)."""
    m = torch.full(z.shape[:-1], -math.inf, dtype=z.dtype)
    l = torch.zeros_like(m)
    for c0 in range(0, z.shape[-1], BLOCK):
        chunk = z[:, c0:c0 + BLOCK]
        m_new = torch.maximum(m, chunk.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new[:, None]).sum(-1)
        m = m_new
    return m + torch.log(l)


def _chunked_kd(s: torch.Tensor, t: torch.Tensor, T: float, alpha: float, y: torch.Tensor | None,
                ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KD-1 with each log-softmax from a chunked log-sum-exp, and ``KL = Σ p_t log p_t - Σ p_t log p_s``
    (the negative entropy and the cross-entropy summed apart); the gradient in closed form (KD-2)."""
    log_ps = s / T - _chunked_lse(s / T)[:, None]
    log_pt = t / T - _chunked_lse(t / T)[:, None]
    p_t = torch.exp(log_pt)
    kl = (p_t * log_pt).sum(-1) - (p_t * log_ps).sum(-1)
    rows = s.shape[0]
    ds_kd = T * (torch.exp(log_ps) - p_t)
    if y is None:
        return T * T * kl.sum() / rows, ds_kd / rows
    valid = y != ignore_index
    count = max(int(valid.sum()), 1)
    log_softmax_s = s - _chunked_lse(s)[:, None]
    picked = torch.where(valid, y, 0)
    ce = -log_softmax_s.gather(1, picked[:, None])[:, 0]
    row_loss = alpha * T * T * kl + (1 - alpha) * ce
    loss = torch.where(valid, row_loss, 0.0).sum() / count
    onehot = torch.zeros_like(s).scatter_(1, picked[:, None], 1.0)
    ds = alpha * ds_kd + (1 - alpha) * (torch.exp(log_softmax_s) - onehot)
    return loss, torch.where(valid[:, None], ds, 0.0) / count


def run_clause(test: Callable[[Trial], None], backend: BackendLike, op: str, case: Case, seed: int) -> Trial:
    """Run the conformance test function ``test`` (a clause's body) on one case, as the plugin would; return
    its trial (comparisons and metrics), or raise the clause's AssertionError."""
    trial = Trial(backend, op, case, clause_of(test) or "", f"{getattr(backend, 'name', 'backend')}-seed{seed}",
                  seed)
    test(trial)
    return trial
