"""Checks of the packed, paged and fp8 operations (SPEC VLEN, DEC, FP8) against their oracles, by the tolerance
rule; the dense variants (VAR) go through ``conformance.checks.check_forward`` / ``check_backward``."""

from __future__ import annotations

import torch

from conformance.checks import default_scale, randn_like
from conformance.tolerance import compare, max_abs_logit
from conformance.trial import Trial
from implementations.ops import OPS
from implementations.variants import VarlenCase


def _logit_bound(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """``max|scale·q·k|`` of packed ``[S, H, D]`` tensors, as a batch of one."""
    return max_abs_logit(q.transpose(0, 1)[None], k.transpose(0, 1)[None], scale)


def varlen_kwargs(case: VarlenCase) -> dict[str, object]:
    """The keyword arguments of a varlen call of ``case`` (window and softcap only where the case uses them)."""
    kwargs: dict[str, object] = {"causal": case.causal}
    if case.window is not None:
        kwargs["window"] = case.window
    if case.softcap is not None:
        kwargs["softcap"] = case.softcap
    return kwargs


def check_varlen_forward(trial: Trial, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_varlen`` on the packed ``inputs`` (q, k, v, cu_seqlens_q, cu_seqlens_k); out and lse of
    every sequence against the oracle of its own dense problem (VLEN-1)."""
    case = trial.case
    assert isinstance(case, VarlenCase)
    q, k, v, cu_q, cu_k = inputs
    kwargs = varlen_kwargs(case)
    out, lse = trial.call("attention_varlen", q, k, v, cu_q, cu_k, max(case.seqlens_q), max(case.seqlens_k),
                          **kwargs)
    scale = default_scale(case.D)
    spec = OPS["attention_varlen"]
    ref_out, ref_lse = spec.oracle(q, k, v, cu_q, cu_k, scale=scale, **kwargs)
    naive_out, naive_lse = spec.naive(q, k, v, cu_q, cu_k, scale=scale, dtype=q.dtype, **kwargs)
    logit = _logit_bound(q, k, scale) if q.numel() and k.numel() else 0.0
    terms = max(case.seqlens_k)
    vmax = float(v.abs().max()) if v.numel() else 0.0
    trial.check(compare("out", out, ref_out, naive_out, dtype=q.dtype, terms=terms, propagated=logit * vmax),
                compare("lse", lse, ref_lse, naive_lse, dtype=lse.dtype, terms=terms, propagated=logit))
    return out, lse


def check_varlen_backward(trial: Trial, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Forward, then ``attention_varlen_backward`` with a random dout; dq, dk, dv against each sequence's
    oracle gradients (VLEN-4)."""
    case = trial.case
    assert isinstance(case, VarlenCase)
    q, k, v, cu_q, cu_k = inputs
    kwargs = varlen_kwargs(case)
    lengths = (max(case.seqlens_q), max(case.seqlens_k))
    out, lse = trial.call("attention_varlen", q, k, v, cu_q, cu_k, *lengths, **kwargs)
    dout = randn_like(out, trial.generator(salt=7))
    grads = trial.call("attention_varlen_backward", q, k, v, out, lse, dout, cu_q, cu_k, *lengths, **kwargs)
    scale = default_scale(case.D)
    spec = OPS["attention_varlen_backward"]
    refs = spec.oracle(q, k, v, dout, cu_q, cu_k, scale=scale, **kwargs)
    naives = spec.naive(q, k, v, dout, cu_q, cu_k, scale=scale, dtype=q.dtype, **kwargs)
    terms = max(max(case.seqlens_q) * (case.Hq // case.Hk), max(case.seqlens_k), case.D)
    magnitude = max(float(r.abs().max()) if r.numel() else 0.0 for r in refs)
    trial.check(*(compare(name, got, ref, naive, dtype=q.dtype, terms=terms, magnitude=magnitude)
                  for name, got, ref, naive in zip(("dq", "dk", "dv"), grads, refs, naives)))
    return grads


def check_decode(trial: Trial, inputs: tuple[torch.Tensor, ...],
                 num_splits: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_decode_paged`` with ``num_splits``; out and lse against the dense oracle of each sequence's
    gathered keys, bottom-right causal (DEC-1, DEC-2)."""
    q, k_pages, v_pages, table, lens = inputs
    kwargs = {"num_splits": num_splits} if num_splits is not None else {}
    out, lse = trial.call("attention_decode_paged", q, k_pages, v_pages, table, lens, **kwargs)
    scale = default_scale(q.shape[-1])
    spec = OPS["attention_decode_paged"]
    ref_out, ref_lse = spec.oracle(q, k_pages, v_pages, table, lens, scale=scale)
    naive_out, naive_lse = spec.naive(q, k_pages, v_pages, table, lens, scale=scale, dtype=q.dtype)
    keys = k_pages.flatten(0, 1).transpose(0, 1)[None]  # every page of the pool, a bound for the logits
    logit = max_abs_logit(q, keys, scale)
    terms = int(lens.max())
    vmax = float(v_pages.abs().max())
    trial.check(compare("out", out, ref_out, naive_out, dtype=q.dtype, terms=terms, propagated=logit * vmax),
                compare("lse", lse, ref_lse, naive_lse, dtype=lse.dtype, terms=terms, propagated=logit))
    return out, lse


def check_fp8(trial: Trial, inputs: tuple[torch.Tensor, ...], causal: str | None) -> tuple[torch.Tensor, ...]:
    """``attention_fp8``; out (bfloat16 floor) and lse (float32 floor) against float64 attention on the
    dequantized inputs, the naive error that of the fp8 computation SPEC FP8-1 states."""
    q, k, v, dq, dk, dv = inputs
    out, lse = trial.call("attention_fp8", q, k, v, dq, dk, dv, causal=causal)
    scale = default_scale(q.shape[-1])
    spec = OPS["attention_fp8"]
    ref_out, ref_lse = spec.oracle(q, k, v, dq, dk, dv, causal=causal, scale=scale)
    naive_out, naive_lse = spec.naive(q, k, v, dq, dk, dv, causal=causal, scale=scale)
    q32, k32 = q.float() * dq, k.float() * dk
    logit = max_abs_logit(q32, k32, scale)
    vmax = float((v.float() * dv).abs().max())
    trial.check(compare("out", out, ref_out, naive_out, dtype=torch.bfloat16, terms=k.shape[2],
                        propagated=logit * vmax),
                compare("lse", lse, ref_lse, naive_lse, dtype=torch.float32, terms=k.shape[2], propagated=logit))
    return out, lse
