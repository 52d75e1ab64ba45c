"""The tolerance rule's floor: no false alarm on the correct kernels that raised one, and the defects it must
still catch.

Each false-alarm case below is a seed on which a correct implementation failed a clause before the floor
counted the rounding behind it (ATT-9: logits of 1e4; WD-0: Σ|x| far above |sum|; KD-6: T²·KL a small
difference of terms of size T²·log V). Each defect case is a wrong kernel the rule must still fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conformance import test_attention as att
from conformance import test_kd_loss as kd
from conformance import test_work_depth as wd
from conformance.cases import attention_inputs
from conformance.checks import check_forward
from conformance.tolerance import LOW_PRECISION_FLOOR_ULPS, atol_floor, max_abs_logit
from conformance.trial import Trial
from implementations import schedule as sched
from implementations.base import AttentionCase, RowsCase
from implementations.ops import OPS
from tests import mutants
from tests.honest import Honest, run_clause

F32_EPS = torch.finfo(torch.float32).eps


# -- the floor's arithmetic -----------------------------------------------------------------------------

def test_floor_terms() -> None:
    ref = torch.tensor([3.0, -2.0], dtype=torch.float64)
    # final rounding (4 ulps of float32 at M = 3) + a 16-term sum's noise at M
    assert atol_floor(torch.float32, ref, terms=16) == pytest.approx(3 * (4 + 4) * F32_EPS)
    # the noise at Σ|x| when given, and the propagated term at eps(accumulator)
    assert atol_floor(torch.float32, ref, terms=16, summands=100.0, propagated=7.0) == \
        pytest.approx(3 * 4 * F32_EPS + 100 * 4 * F32_EPS + 7 * F32_EPS)
    # half types: one ulp of the output dtype, noise in the float32 accumulator
    bf16_eps = torch.finfo(torch.bfloat16).eps
    assert atol_floor(torch.bfloat16, ref) == pytest.approx(3 * (LOW_PRECISION_FLOOR_ULPS * bf16_eps + F32_EPS))


def test_max_abs_logit_follows_gqa() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 5, 8, generator=g)
    k = torch.randn(2, 3, 7, 8, generator=g)
    expanded = k.repeat_interleave(2, dim=1)
    expected = float((q.double() @ expanded.double().transpose(-1, -2)).abs().max()) * 0.3
    assert max_abs_logit(q, k, -0.3) == pytest.approx(expected, rel=1e-5)


# -- ATT-9: logits of 1e4 in float32 ------------------------------------------------------------------

#: seeds on which the oracle's float32 formula failed ATT-9 while the floor ignored the logits' rounding
ATT9_SEEDS = (8, 62, 87, 98, 101, 104, 107)


def _att9_case(seed: int) -> AttentionCase:
    """ATT-9's cases, cycled by seed: both causal settings, both shapes."""
    Sq, Sk = ((113, 203), (128, 128))[(seed // 2) % 2]
    return AttentionCase(2, 2, 2, Sq, Sk, 64, torch.float32, "cpu", (None, "top_left")[seed % 2])


@pytest.mark.parametrize("formulation", ["oracle", "online"])
@pytest.mark.parametrize("seed", ATT9_SEEDS)
def test_att9_correct_float32_passes(formulation: str, seed: int) -> None:
    run_clause(att.test_large_logits, Honest(formulation), "attention", _att9_case(seed), seed)


class LogitsInHalf(Honest):
    """A float32 kernel that rounds its logits to bfloat16 before the softmax (loses 8 bits of the row max)."""

    def attention(self, q, k, v, *, causal=None, scale=None, tiles=None):  # noqa: ANN001, ANN201
        sc = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        s = ((q @ k.transpose(-1, -2)) * sc).to(torch.bfloat16).float()
        lse = torch.logsumexp(s, -1)
        return torch.exp(s - lse[..., None]) @ v, lse


def test_att9_still_fails_logits_rounded_to_half() -> None:
    with pytest.raises(AssertionError, match="out: err"):
        run_clause(att.test_large_logits, LogitsInHalf(), "attention", _att9_case(0), 0)


# -- WD-0: the sum's condition ------------------------------------------------------------------------

#: (n, seed) on which a float32 pairwise tree, bit for bit its declared schedule, failed WD-0 while the
#: floor was taken at |sum|
WD0_CASES = ((64, 185), (100, 50), (1000, 127), (65536, 104))


@pytest.mark.parametrize("n,seed", WD0_CASES)
def test_wd0_tree_following_its_schedule_passes(n: int, seed: int) -> None:
    run_clause(wd.test_model_measures, Honest(), "reduce_sum", RowsCase(1, n, torch.float32, "cpu"), seed)


class HalfTree(Honest):
    """A pairwise tree summed in float16 (declared honestly, summed too coarsely)."""

    def reduce_sum(self, x):  # noqa: ANN001, ANN201
        tree = sched.pairwise_tree(x.numel())
        return torch.tensor(tree.evaluate(x.numpy(), np.float16), dtype=torch.float32), tree


def test_wd0_still_fails_a_float16_sum() -> None:
    with pytest.raises(AssertionError, match="sum: err"):
        run_clause(wd.test_model_measures, HalfTree(), "reduce_sum", RowsCase(1, 1000, torch.float32, "cpu"), 1)


# -- KD-6 in float64 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_kd6_chunked_float64_passes(seed: int) -> None:
    """Vocabulary chunks merged by a running log-sum-exp, entropy and cross-entropy summed apart."""
    run_clause(kd.test_high_temperature_limit, Honest("online"), "kd_loss", RowsCase(8, 1000, torch.float64, "cpu"),
               seed)


def test_kd6_still_fails_t_instead_of_t_squared() -> None:
    with pytest.raises(AssertionError):
        run_clause(kd.test_high_temperature_limit, mutants.mutant_kd_no_t_squared(), "kd_loss",
                   RowsCase(8, 1000, torch.float32, "cpu"), 0)


# -- ATT-1 at production size: low-precision accumulation ------------------------------------------------

#: bfloat16, a few heads, D 64, many keys: the accumulator's roundings add up over key tiles
PRODUCTION = (AttentionCase(1, 4, 4, 32, 16384, 64, torch.bfloat16, "cpu"),
              AttentionCase(1, 2, 2, 16, 32768, 64, torch.bfloat16, "cpu"))


def _att1(backend: object, case: AttentionCase, seed: int) -> Trial:
    return run_clause(att.test_forward_matches_oracle, backend, "attention", case, seed)


@pytest.mark.parametrize("case", PRODUCTION, ids=lambda c: c.label)
@pytest.mark.parametrize("seed", range(2))
def test_half_tile_accumulation_fails_att1_at_production_size(case: AttentionCase, seed: int) -> None:
    """An output accumulator held in bfloat16 between 64-key tiles (2-8x the naive error) fails ATT-1; a
    correct bfloat16 kernel (float32 accumulator, P rounded to bfloat16 for P·V) and the oracle's formula
    in bfloat16 pass."""
    with pytest.raises(AssertionError, match="out: err"):
        _att1(mutants.mutant_half_tile_accumulation(), case, seed)
    for correct in (Honest("online"), Honest("oracle"), mutants.control()):
        trial = _att1(correct, case, seed)
        assert trial.comparisons[0].passed


def test_half_accumulation_is_caught_by_the_floor_not_the_multiplier() -> None:
    """The defect's error is within 2x the naive error plus a floor of 4 ulps at M: it is the floor's one ulp
    in bfloat16 that fails it, not a change of multiplier."""
    case = PRODUCTION[0]
    trial = Trial(mutants.mutant_half_tile_accumulation(), "attention", case, "ATT-1", "mutant", 0)
    with pytest.raises(AssertionError):
        check_forward(trial, *attention_inputs(case, 0), causal=None, outputs=("out",))
    c = trial.comparisons[0]
    M = float(OPS["attention"].oracle(*attention_inputs(case, 0), causal=None, scale=1 / 8)[0].abs().max())
    assert c.err <= c.mult * c.ref_err + 4 * torch.finfo(torch.bfloat16).eps * M
