"""SPEC chapter FP8: fp8 forward (clauses FP8-1, FP8-2)."""

from __future__ import annotations

import torch

from conformance import variant_cases as V
from conformance.checks import expect_input_error
from conformance.spec import clause
from conformance.trial import Trial, cases
from conformance.variant_checks import check_fp8
from implementations.base import AttentionCase


@clause("FP8-1")
@cases("attention_fp8", V.fp8_cases)
def test_fp8_forward(trial: Trial) -> None:
    """out (bfloat16) and lse (float32) of attention on the dequantized inputs `descale·float(x)`, for unit and
    non-unit descales, against the float64 oracle on those values; the naive error is the fp8 computation's
    (float32 products and softmax, P rounded to e4m3 before `P V`), multipliers 2.

    Guards against: a descale forgotten or applied twice, the softmax scale applied without the descales, out
    not rounded from a float32 accumulator.
    """
    for descales in V.FP8_DESCALES:
        check_fp8(trial, V.fp8_inputs(trial.case, trial.seed, descales), trial.case.causal)
    trial.metrics["descales"] = [list(d) for d in V.FP8_DESCALES]


def _bad(b, device: str, quick: bool) -> list[AttentionCase]:  # noqa: ANN001
    return V.fp8_cases(b, device, True)[:1]


@clause("FP8-2")
@cases("attention_fp8", _bad)
def test_bad_fp8_input(trial: Trial) -> None:
    """Bad descales and inputs get a clear error: a descale of shape [1], a float64 descale, zero, negative and
    infinite descales, bfloat16 inputs.
    """
    q, k, v, dq, dk, dv = V.fp8_inputs(trial.case, trial.seed, V.FP8_DESCALES[0])
    fn = trial.backend.attention_fp8
    dev = q.device
    bad = {"shape [1]": dq.reshape(1), "float64": dq.double(), "zero": torch.tensor(0.0, device=dev),
           "negative": torch.tensor(-1.0, device=dev), "infinite": torch.tensor(float("inf"), device=dev)}
    problems = [expect_input_error(lambda d=d: fn(q, k, v, d, dk, dv), ("descale",), f"{what} q_descale")
                for what, d in bad.items()]
    wide = tuple(x.to(torch.bfloat16) for x in (q, k, v))
    problems.append(expect_input_error(lambda: fn(*wide, dq, dk, dv), ("dtype",), "bfloat16 inputs"))
    problems = [p for p in problems if p]
    trial.metrics["bad_inputs_checked"] = len(bad) + 1
    assert not problems, "; ".join(problems)
