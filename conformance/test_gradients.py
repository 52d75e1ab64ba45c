"""SPEC chapter GRAD: attention gradients (clauses GRAD-1 .. GRAD-7)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from conformance import cases as C
from conformance.checks import check_backward, default_scale, memory_growth, randn_like
from conformance.spec import clause
from conformance.tolerance import compare
from conformance.trial import SealedCall, Trial, cases, unsupported
from implementations.base import AttentionCase, BackendLike
from implementations.ops import OPS
from implementations.ops import attention as attention_op


def _grad1(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    plain = C.attention_matrix(b, device, quick, backward=True)
    if quick:
        plain = [c for c in plain if c.Sq * c.Sk <= 1 << 18]
    causal = C.small_attention(b, device, quick, backward=True, causal_variants=("top_left", "bottom_right"),
                               seqs=((113, 203), (203, 113), (128, 128)), D=59, every_dtype=False)
    return plain + causal + C.production_attention(b, device, quick, backward=True)


@clause("GRAD-1")
@cases("attention_backward", _grad1)
def test_gradients_match_oracle(trial: Trial) -> None:
    """dq, dk, dv equal the float64 oracle's autograd gradients for a random dout (multiplier 3).

    Guards against: a wrong delta term, the scale applied twice or not at all in dS, dk/dv accumulated
    over the wrong query rows at ragged edges, causal masks that differ between forward and backward.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_backward(trial, q, k, v, causal=trial.case.causal)


BACKWARD_SCALES = (0.3, -0.7)


def _scaled(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, backward=True, causal_variants=(None, "top_left"),
                             seqs=((97, 203),), D=59, every_dtype=False)


@clause("GRAD-1")
@cases("attention_backward", _scaled)
def test_gradients_custom_scale(trial: Trial) -> None:
    """dq, dk, dv for a custom `scale` (BACKWARD_SCALES, one negative), the same scale given to forward and
    backward, against the oracle's autograd at that scale.

    Guards against: a backward that recomputes P with 1/sqrt(D) whatever the scale, or drops its sign in dS.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    for scale in BACKWARD_SCALES:
        check_backward(trial, q, k, v, causal=trial.case.causal, scale=scale)
    trial.metrics["scales"] = list(BACKWARD_SCALES)


#: the largest sequence length of the memory-growth sweep (conformance.cases.memory_lengths)
MEMORY_S = {"cpu": 2048, "cuda": 16384}


@clause("GRAD-2")
@cases("attention_backward", C.memory_cases(lambda caps: caps.backward_dtypes, MEMORY_S), premise=C.memory_sized)
def test_backward_recomputes_from_lse(trial: Trial) -> None:
    """A `saves="lse"` backend's backward uses only Q, K, V, out, lse, dout and holds no Sq x Sk buffer.

    The contract's backward receives exactly those six tensors; what it allocates is measured like ATT-10
    (peak extra memory below the gradients + a tenth of the float32 score matrix, log-log slope <= 1.1).
    Where the backend also offers `autograd_attention` (a differentiable forward), the tensors autograd
    saves are inspected: none may have B*Hq*Sq*Sk elements or more. `saves="scores"` backends are exempt.
    """
    caps = trial.backend.capabilities
    if caps.saves != "lse":
        unsupported(f"declares saves={caps.saves!r}: exempt from GRAD-2")
    case = trial.case

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[Callable[[], SealedCall], int]:
        out, lse = trial.call("attention", q, k, v)
        dout = randn_like(out, trial.generator(salt=7))
        grads_bytes = 3 * q.numel() * q.element_size()
        return (lambda: trial.seal("attention_backward", q, k, v, out, lse, dout)), grads_bytes

    memory_growth(trial, prepare)
    autograd_attention = getattr(trial.backend, "autograd_attention", None)
    if callable(autograd_attention):
        c = AttentionCase(1, 2, 2, 256, 256, 32, case.dtype, case.device)
        q, k, v = (x.requires_grad_() for x in C.attention_inputs(c, trial.seed))
        saved: list[tuple[int, ...]] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            autograd_attention(q, k, v)
        big = [s for s in saved if torch.Size(s).numel() >= c.B * c.Hq * c.Sq * c.Sk]
        trial.metrics["autograd_saved_shapes"] = [list(s) for s in saved]
        assert not big, f"autograd saves Sq x Sk-sized tensors: {big}"


def _delta(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, backward=True, causal_variants=(None, "bottom_right"),
                             seqs=((113, 203), (239, 1)))


@clause("GRAD-3")
@cases("attention_delta", _delta)
def test_delta(trial: Trial) -> None:
    """`delta = rowsum(dout ∘ out)` (float32, [B, Hq, Sq]), which equals `rowsum(P ∘ dP)`.

    The backend's delta is compared with the float64 rowsum of its inputs; the identity with
    rowsum(P ∘ dP) is checked on the float64 oracle. Guards against: delta summed over the wrong axis,
    accumulated in half precision, or taken from the wrong out.
    """
    case = trial.case
    q, k, v = C.attention_inputs(case, trial.seed)
    sc = default_scale(case.D)
    out64, _ = OPS["attention"].oracle(q, k, v, causal=case.causal, scale=sc)
    out = out64.to(case.dtype).to(case.device)
    dout = randn_like(out, trial.generator(salt=7))
    delta = trial.call("attention_delta", out, dout)
    ref = OPS["attention_delta"].oracle(out, dout)
    naive = OPS["attention_delta"].naive(out, dout, torch.float32)
    trial.check(compare("delta", delta, ref, naive, dtype=torch.float32, terms=case.D))
    # the identity on the oracle: rowsum(dO ∘ O) = rowsum(P ∘ dP) with dP = dO Vᵀ
    kx, vx = (x.double().cpu().repeat_interleave(case.Hq // case.Hk, dim=1) for x in (k, v))
    scores = (q.double().cpu() @ kx.transpose(-1, -2)) * sc
    visible = attention_op.visibility(case.Sq, case.Sk, case.causal)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    identity = (p * (dout.double().cpu() @ vx.transpose(-1, -2))).sum(-1)
    assert torch.allclose(identity, (dout.double().cpu() * out64).sum(-1), atol=1e-9)


def _gqa(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    out = []
    for heads in ((4, 2), (6, 3), (4, 1)):
        out += C.small_attention(b, device, quick, backward=True, causal_variants=(None, "top_left"),
                                 seqs=((113, 203),), heads=heads)
    return out


@clause("GRAD-4")
@cases("attention_backward", _gqa)
def test_gqa_gradients_summed(trial: Trial) -> None:
    """With Hk < Hq, dk and dv (shaped like k, v) are summed over the query heads sharing a KV head.

    Guards against: dk/dv of one query head only, a last-writer-wins race, the `%` head mapping.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_backward(trial, q, k, v, causal=trial.case.causal)


def _masked(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, backward=True, causal_variants=("bottom_right",),
                             seqs=((239, 1), (200, 77), (64, 63)))


@clause("GRAD-5")
@cases("attention_backward", _masked, premise=C.has_masked_rows)
def test_masked_rows_backward(trial: Trial) -> None:
    """Fully masked rows give dq = 0 on those rows and no NaN in dq, dk, dv.

    Guards against: exp(s - lse) with lse = -inf giving inf or NaN, which then spreads into dk and dv.
    """
    case = trial.case
    q, k, v = C.attention_inputs(case, trial.seed)
    out, lse = trial.call("attention", q, k, v, causal="bottom_right")
    dout = randn_like(out, trial.generator(salt=7))
    dq, dk, dv = trial.call("attention_backward", q, k, v, out, lse, dout, causal="bottom_right")
    masked = case.Sq - case.Sk
    nans = {n: int(torch.isnan(g).sum()) for n, g in (("dq", dq), ("dk", dk), ("dv", dv))}
    nonzero = int((dq[:, :, :masked] != 0).sum())
    trial.metrics.update({"masked_rows": masked, "nan": nans, "nonzero_masked_dq": nonzero})
    problems = [f"NaN in {n} ({c} elements)" for n, c in nans.items() if c]
    if nonzero:
        problems.append(f"dq nonzero on fully masked rows ({nonzero} elements)")
    assert not problems, "; ".join(problems)


REPEATS = 20


def _determinism(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, backward=True, causal_variants=(None,),
                             seqs=((128, 128),), heads=(4, 2), every_dtype=False)


@clause("GRAD-6")
@cases("attention_backward", _determinism)
def test_determinism(trial: Trial) -> None:
    """`deterministic=True`: bit-identical dq, dk, dv over 20 repeats; otherwise the spread is measured.

    The spread (max |g_i - g_0| over repeats) is recorded for every backend. Guards against: atomics or
    split-K reductions in a backend that claims determinism.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    out, lse = trial.call("attention", q, k, v)
    dout = randn_like(out, trial.generator(salt=7))
    first = trial.call("attention_backward", q, k, v, out, lse, dout)
    spread = {"dq": 0.0, "dk": 0.0, "dv": 0.0}
    for _ in range(REPEATS - 1):
        again = trial.call("attention_backward", q, k, v, out, lse, dout)
        for name, a, b in zip(spread, first, again):
            spread[name] = max(spread[name], float((a.double() - b.double()).abs().max()))
    declared = trial.backend.capabilities.deterministic
    trial.metrics.update({"repeats": REPEATS, "spread": spread, "declared_deterministic": declared})
    if declared:
        assert all(s == 0.0 for s in spread.values()), f"declared deterministic but gradients vary: {spread}"


def _gradcheck(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return [AttentionCase(1, 2, 1, 5, 7, 16, torch.float64, device, causal)
            for causal in (None, "top_left", "bottom_right")]


class _BackendAttention(torch.autograd.Function):
    """out = backend.attention(q, k, v), with backend.attention_backward as its derivative."""

    @staticmethod
    def forward(ctx, trial: Trial, causal, q, k, v):  # noqa: ANN001, ANN205
        out, lse = trial.call("attention", q, k, v, causal=causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.trial, ctx.causal = trial, causal
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001, ANN205
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.trial.call("attention_backward", q, k, v, out, lse, dout.contiguous(), causal=ctx.causal)
        return None, None, dq, dk, dv


@clause("GRAD-7")
@cases("attention_backward", _gradcheck)
def test_float64_gradcheck(trial: Trial) -> None:
    """`torch.autograd.gradcheck` passes in float64, the backward wrapped around the forward.

    Guards against: a backward that is close to the oracle only at float32 precision, i.e. an
    approximation rather than the derivative (e.g. a stale or detached delta).
    """
    q, k, v = (x.requires_grad_() for x in C.attention_inputs(trial.case, trial.seed))
    ok = torch.autograd.gradcheck(lambda a, b, c: _BackendAttention.apply(trial, trial.case.causal, a, b, c),
                                  (q, k, v), eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=True)
    assert ok
