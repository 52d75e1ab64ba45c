"""Checks shared by several clauses: forward and backward against the oracle, memory growth, bad input."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from conformance import cases as casegen
from conformance.memory import loglog_slope, peak_extra
from conformance.tolerance import compare, max_abs_logit
from conformance.trial import SealedCall, Trial
from implementations.base import AttentionCase, CausalVariant
from implementations.ops import OPS


def default_scale(D: int) -> float:
    return 1.0 / math.sqrt(D)



def call_attention(trial: Trial, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   causal: CausalVariant | bool | None, scale: float | None = None,
                   **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend's forward with the case's tiles (when set) and the variant arguments (SPEC VAR) given."""
    tiles = trial.case.tiles if isinstance(trial.case, AttentionCase) else None
    kwargs = {"tiles": tiles} if tiles else {}
    return trial.call("attention", q, k, v, causal=causal, scale=scale, **kwargs, **variants)


def variant_logit_bound(q: torch.Tensor, k: torch.Tensor, **variants: object) -> float:
    """What the variants add to the largest logit a kernel rounds: the largest finite bias and the largest
    ALiBi term ``max slope · max distance`` (SPEC VAR)."""
    extra = 0.0
    bias = variants.get("bias")
    if isinstance(bias, torch.Tensor) and bias.dtype != torch.bool:
        extra += float(bias.abs().max())
    slopes = variants.get("alibi_slopes")
    if isinstance(slopes, torch.Tensor):
        extra += float(slopes.abs().max()) * (q.shape[2] + k.shape[2])
    return extra


def check_forward(trial: Trial, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                  causal: CausalVariant | None, scale: float | None = None,
                  outputs: tuple[str, ...] = ("out", "lse"), **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward (with the variant arguments of SPEC VAR given) and apply the tolerance rule to
    ``outputs`` against the float64 oracle."""
    out, lse = call_attention(trial, q, k, v, causal=causal, scale=scale, **variants)
    judge_forward(trial, q, k, v, out, lse, causal=causal, scale=scale, outputs=outputs, **variants)
    return out, lse


def judge_forward(trial: Trial, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, *, causal: CausalVariant | None, scale: float | None = None,
                  outputs: tuple[str, ...] = ("out", "lse"), op: str = "attention", **variants: object) -> None:
    """The tolerance rule on a forward's ``outputs`` (ATT-1, ATT-2) against operation ``op``'s float64 oracle of
    q, k, v (with the variant arguments of SPEC VAR)."""
    sc = default_scale(q.shape[-1]) if scale is None else scale
    spec = OPS[op]
    ref_out, ref_lse = spec.oracle(q, k, v, causal=causal, scale=sc, **variants)
    naive_out, naive_lse = spec.naive(q, k, v, causal=causal, scale=sc, dtype=q.dtype, **variants)
    # a kernel rounds each logit s to its accumulator (|δs| <= eps/2·max|s|); the softmax carries that to out
    # with gain <= 2·max|v| (δout_i = Σ_j p_ij δs_ij (v_j - out_i)) and to lse with gain <= 1
    logit = max_abs_logit(q, k, sc) + variant_logit_bound(q, k, **variants)
    found = {"out": (out, ref_out, naive_out, q.dtype, logit * float(v.abs().max())),
             "lse": (lse, ref_lse, naive_lse, lse.dtype, logit)}
    trial.check(*(compare(name, got, ref, naive, dtype=dtype, terms=k.shape[2], propagated=propagated)
                  for name in outputs for got, ref, naive, dtype, propagated in (found[name],)))


def check_backward(trial: Trial, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   causal: CausalVariant | None, scale: float | None = None, **variants: object
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward then backward with a random ``dout`` (the variant arguments of SPEC VAR given to both); dq, dk,
    dv against the oracle's autograd (GRAD-1)."""
    out, lse = trial.call("attention", q, k, v, causal=causal, scale=scale, **variants)
    dout = randn_like(out, trial.generator(salt=7))
    dq, dk, dv = trial.call("attention_backward", q, k, v, out, lse, dout, causal=causal, scale=scale, **variants)
    judge_backward(trial, q, k, v, dout, (dq, dk, dv), causal=causal, scale=scale, **variants)
    return dq, dk, dv


def judge_backward(trial: Trial, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                   grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *, causal: CausalVariant | None,
                   scale: float | None = None, op: str = "attention_backward", **variants: object) -> None:
    """The tolerance rule on ``grads = (dq, dk, dv)`` against operation ``op``'s oracle (autograd gradients,
    GRAD-1), with the variant arguments of SPEC VAR."""
    sc = default_scale(q.shape[-1]) if scale is None else scale
    spec = OPS[op]
    refs = spec.oracle(q, k, v, dout, causal=causal, scale=sc, **variants)
    naives = spec.naive(q, k, v, dout, causal=causal, scale=sc, dtype=q.dtype, **variants)
    # the longest sums behind a gradient element: over the queries of a KV head (dk, dv), over the keys (dq),
    # and over D in dP = dO·v and delta = dO·o, whose difference every dS takes (with one key it cancels to 0)
    terms = max(q.shape[2] * (q.shape[1] // k.shape[1]), k.shape[2], q.shape[3])
    magnitude = max(float(r.abs().max()) for r in refs)  # dq is exactly 0 when each row sees one key
    trial.check(*(compare(name, got, ref, naive, dtype=q.dtype, terms=terms, magnitude=magnitude)
                  for name, got, ref, naive in zip(("dq", "dk", "dv"), grads, refs, naives)))


def randn_like(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fresh normal draws shaped and typed like ``x`` (made on the CPU, so identical on every device)."""
    return casegen.randn(tuple(x.shape), x.dtype, x.device, g)


def memory_growth(trial: Trial,
                  prepare: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[Callable[[], SealedCall], int]]
                  ) -> None:
    """Measure the peak extra memory of a call at each sequence length; check the budget and the slope.

    For each S of ``memory_lengths(case.Sq)`` the trial's case is drawn at Sq = Sk = S and ``prepare(q, k, v)`` returns
    ``(seal, output_bytes)``; ``seal()`` prepares one sealed call. The first call at each S is a warm-up (a
    backend may allocate a workspace once, at its first call of a size, and keep it); the second runs under
    the probe. Passes when the peak at the largest S stays below the outputs plus a tenth of the float32
    score matrix (``0.1·B·Hq·S²·4`` bytes) and the log-log slope of the peaks over ``lengths`` is <= 1.1
    (SPEC ATT-10, GRAD-2).
    """
    case = trial.case
    assert isinstance(case, AttentionCase)
    lengths = casegen.memory_lengths(case.Sq)
    peaks, probe = [], ""
    for S in lengths:
        make, out_bytes = prepare(*casegen.attention_inputs(dataclasses.replace(case, Sq=S, Sk=S), trial.seed))
        warm_up = make()
        warm_up.run()
        warm_up.verify()
        del warm_up
        sealed = make()
        _, peak = peak_extra(sealed.run, trial.device)
        sealed.verify()
        peaks.append(peak.bytes)
        probe = peak.probe
        del sealed, make
    slope = loglog_slope([float(s) for s in lengths], [float(p) for p in peaks])
    allowed = out_bytes + int(0.1 * case.B * case.Hq * lengths[-1] ** 2 * 4)
    trial.metrics.update({"S": lengths, "peak_extra_bytes": peaks, "slope": round(slope, 3),
                          "budget_bytes_at_max_S": allowed, "probe": probe})
    problems = []
    if peaks[-1] > allowed:
        problems.append(f"peak extra memory {peaks[-1]} B at S={lengths[-1]} exceeds the budget {allowed} B "
                        "(outputs + a tenth of the float32 score matrix)")
    if slope > 1.1:
        problems.append(f"peak extra memory grows with log-log slope {slope:.2f} > 1.1 over S={lengths} "
                        f"(peaks {peaks} B)")
    assert not problems, "; ".join(problems)


def expect_input_error(fn: Callable[[], object], keywords: tuple[str, ...], what: str) -> str | None:
    """Call ``fn``; return a problem description unless it raised an error whose message names the problem.

    Accepted: any ``Exception`` whose message contains one of ``keywords`` (case-insensitive). A silent
    return, a crash-type error without the keyword, or a message that names nothing is a problem.
    """
    try:
        fn()
    except Exception as exc:  # the clause is about the message, whatever the type
        message = str(exc).lower()
        if any(k.lower() in message for k in keywords):
            return None
        return f"{what}: raised {type(exc).__name__}({str(exc)[:200]!r}) which names none of {keywords}"
    return f"{what}: no error was raised"
