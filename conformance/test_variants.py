"""SPEC chapter VAR: attention variants — sliding window, logit softcap, bias and boolean mask, ALiBi (VAR-1 .. 8)."""

from __future__ import annotations

import torch

from conformance import cases as C
from conformance import variant_cases as V
from conformance.checks import call_attention, check_backward, check_forward, expect_input_error
from conformance.spec import clause
from conformance.trial import Trial, cases
from implementations.base import AttentionCase, BackendLike


def _inputs(trial: Trial, q_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """The case's q, k, v (q times ``q_scale``) and its variant arguments."""
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    return q * q_scale if q_scale != 1.0 else q, k, v, V.variant_kwargs(trial.case, trial.seed)


@clause("VAR-1")
@cases("attention", V.window_cases)
def test_window(trial: Trial) -> None:
    """Key j is visible to query i iff `i + Sk - Sq - left <= j <= i + Sk - Sq + right` (-1 unbounded), AND-ed
    with causal; out and lse against the oracle. The table puts the edges on tile boundaries and one off.

    Guards against: an edge off by one, the top-left alignment when Sq != Sk, a tile wrongly skipped or kept.
    """
    q, k, v, kwargs = _inputs(trial)
    check_forward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-2")
@cases("attention", V.independence_cases)
def test_window_independence(trial: Trial) -> None:
    """Redrawing (five times larger) every key and value outside query i's window leaves `out[i]` bit-identical,
    for each row i on its own: the keys left and right of the window are redrawn together.

    Guards against: a kernel that reads keys past the window's edges (a mask applied after the sum, a stale tile).
    """
    case = trial.case
    q, k, v, kwargs = _inputs(trial)
    left, right = case.window or (-1, -1)
    out1, _ = call_attention(trial, q, k, v, causal=None, **kwargs)
    shift = case.Sk - case.Sq
    changed = []
    rows = range(0, case.Sq, max(1, case.Sq // 6))
    for i in rows:
        g = trial.generator(salt=5 + i)
        outside = torch.ones(case.Sk, dtype=torch.bool)
        outside[max(0, i + shift - left):max(0, i + shift + right + 1)] = False
        k2, v2 = k.clone(), v.clone()
        n = int(outside.sum())
        k2[:, :, outside] = C.randn((case.B, case.Hk, n, case.D), case.dtype, case.device, g, scale=5.0)
        v2[:, :, outside] = C.randn((case.B, case.Hk, n, case.D), case.dtype, case.device, g, scale=5.0)
        out2, _ = call_attention(trial, q, k2, v2, causal=None, **kwargs)
        if not torch.equal(out1[:, :, i], out2[:, :, i]):
            changed.append(i)
    trial.metrics["rows_checked"] = len(rows)
    assert not changed, f"rows {changed} changed when only keys outside their windows were redrawn"


@clause("VAR-3")
@cases("attention_backward", lambda b, d, quick: V.window_cases(b, d, quick, backward=True))
def test_window_gradients(trial: Trial) -> None:
    """dq, dk, dv under a window (and causal) equal the oracle's gradients (multiplier 3).

    Guards against: a backward that skips or keeps other tiles than its forward, dk/dv written for keys no
    query sees (they must be 0).
    """
    q, k, v, kwargs = _inputs(trial)
    check_backward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-4")
@cases("attention", V.softcap_cases)
def test_softcap(trial: Trial) -> None:
    """`s <- cap·tanh(s / cap)` on the scaled logits before masking and softmax; q is scaled by
    SOFTCAP_Q_SCALE so the largest logits pass the smallest cap (0.5) tens of times over.

    Guards against: the cap applied to the unscaled `q·k`, after the mask or bias, or as a clamp.
    """
    q, k, v, kwargs = _inputs(trial, V.SOFTCAP_Q_SCALE)
    check_forward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-5")
@cases("attention_backward", lambda b, d, quick: V.softcap_cases(b, d, quick, backward=True))
def test_softcap_gradients(trial: Trial) -> None:
    """dq, dk, dv through the tanh (`1 - tanh²(s / cap)`), against the oracle's autograd, with logits far
    past the cap (q scaled as in VAR-4).

    Guards against: a backward that leaves out the tanh's derivative (right only where every |s| << cap).
    """
    q, k, v, kwargs = _inputs(trial, V.SOFTCAP_Q_SCALE)
    check_backward(trial, q, k, v, causal=trial.case.causal, **kwargs)


def _bias_backward(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return V.bias_cases(b, device, quick, backward=True)


@clause("VAR-6")
@cases("attention", V.bias_cases)
def test_bias(trial: Trial) -> None:
    """An additive bias broadcast from `[B, Hq, Sq, Sk]`, `[Hq, Sq, Sk]`, `[Sq, Sk]` or `[B, 1, Sq, Sk]`, or a
    boolean mask (True = visible) whose first row hides every key (ATT-4 there: out 0, lse -inf).

    Guards against: a bias broadcast over the wrong axis, a mask read inverted, NaN in fully masked rows.
    """
    q, k, v, kwargs = _inputs(trial)
    check_forward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-6")
@cases("attention_backward", _bias_backward)
def test_bias_gradients(trial: Trial) -> None:
    """dq, dk, dv with a bias or mask (not differentiated) against the oracle's autograd.

    Guards against: a backward that recomputes P without the bias, or NaN gradients on masked rows.
    """
    q, k, v, kwargs = _inputs(trial)
    check_backward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-7")
@cases("attention", V.alibi_cases)
def test_alibi(trial: Trial) -> None:
    """ALiBi adds `-slope_h·|i + Sk - Sq - j|` (bottom-right distance) with the query head's slope; Sq != Sk.

    Guards against: the top-left distance `|i - j|`, the KV head's slope under GQA, the bias's sign.
    """
    q, k, v, kwargs = _inputs(trial)
    check_forward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-7")
@cases("attention_backward", lambda b, d, quick: V.alibi_cases(b, d, quick, backward=True))
def test_alibi_gradients(trial: Trial) -> None:
    """dq, dk, dv with ALiBi against the oracle's autograd.

    Guards against: a backward that recomputes P without the ALiBi term or with other slopes.
    """
    q, k, v, kwargs = _inputs(trial)
    check_backward(trial, q, k, v, causal=trial.case.causal, **kwargs)


@clause("VAR-8")
@cases("attention", V.bad_variant_cases)
def test_bad_variant_arguments(trial: Trial) -> None:
    """Malformed variant arguments get a clear error naming the problem (the variant the case declares):
    windows `(3, -2)`, `(1.5, 0)` and `5`; softcaps 0, -1 and inf; a bias of shape `[Sq, Sk + 1]` and an int
    bias; slopes of the wrong length and in float64.
    """
    case = trial.case
    q, k, v, kwargs = _inputs(trial)
    bad: dict[str, list[object]] = {
        "window": [(3, -2), (1.5, 0), 5],
        "softcap": [0.0, -1.0, float("inf")],
        "bias": [torch.zeros(case.Sq, case.Sk + 1, device=case.device),
                 torch.zeros(case.Sq, case.Sk, dtype=torch.int32, device=case.device)],
        "alibi_slopes": [torch.ones(case.Hq + 1, device=case.device),
                         torch.ones(case.Hq, dtype=torch.float64, device=case.device)],
    }
    words = {"window": ("window",), "softcap": ("softcap",), "bias": ("bias",), "alibi_slopes": ("alibi", "slope")}
    name = next(iter(kwargs))
    problems = [expect_input_error(lambda value=value: trial.backend.attention(q, k, v, **{name: value}),
                                   words[name], f"{name}={value if not torch.is_tensor(value) else 'tensor'}")
                for value in bad[name]]
    problems = [p for p in problems if p]
    trial.metrics["bad_inputs_checked"] = len(bad[name])
    assert not problems, "; ".join(problems)
    check_forward(trial, q, k, v, causal=None, **kwargs)  # and the good argument still works

