"""The property clauses (ATT-5 cut, KD-4 shift, SMX-3 split points) search with hypothesis: a defect is found,
shrunk, and named in the failure and in the trial's metrics; the search is the same on every run of a case."""

from __future__ import annotations

import ast
import math

import pytest
import torch

from conformance import test_attention as att
from conformance import test_kd_loss as kd
from conformance import test_softmax_stats as smx
from conformance.trial import Trial
from implementations.base import AttentionCase, RowsCase
from tests.honest import Honest, run_clause

CAUSAL = AttentionCase(2, 3, 3, 128, 128, 64, torch.float32, "cpu", "top_left")


class LeakyDiagonal(Honest):
    """Top-left causal attention that lets row i see key i + 1 (an off-by-one diagonal)."""

    def attention(self, q, k, v, *, causal=None, scale=None, tiles=None):  # noqa: ANN001, ANN201
        i = torch.arange(q.shape[2])[:, None]
        j = torch.arange(k.shape[2])[None, :]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        s = s.masked_fill(j > i + 1, -math.inf)
        lse = torch.logsumexp(s, -1)
        return torch.exp(s - lse[..., None]) @ v, lse


class UnscaledMerge(Honest):
    """softmax_merge that adds the sums without rescaling them to the common max."""

    def softmax_merge(self, m1, l1, m2, l2):  # noqa: ANN001, ANN201
        return torch.maximum(m1, m2), l1 + l2


class NoMaxKD(Honest):
    """KD loss whose log-softmax takes log Σ exp(z) without subtracting the row max (no labels)."""

    def kd_loss(self, s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100):  # noqa: ANN001, ANN201
        T = float(temperature)
        log_ps = s / T - torch.log(torch.exp(s / T).sum(-1, keepdim=True))
        log_pt = t / T - torch.log(torch.exp(t / T).sum(-1, keepdim=True))
        kl = (torch.exp(log_pt) * (log_pt - log_ps)).sum(-1)
        return T * T * kl.mean(), T * (torch.exp(log_ps) - torch.exp(log_pt)) / s.shape[0]


def _failure(test, backend, op: str, case, seed: int = 5) -> tuple[str, Trial]:  # noqa: ANN001
    trial = Trial(backend, op, case, "", "defect", seed)
    with pytest.raises(AssertionError) as failed:
        test(trial)
    return str(failed.value), trial


def test_att5_finds_and_shrinks_the_cut() -> None:
    message, trial = _failure(att.test_causal_independence, LeakyDiagonal(), "attention", CAUSAL)
    cut = int(trial.metrics["falsifying cut"])
    # every cut leaks into row cut - 1 (it sees key cut); shrinking reaches the smallest cut
    assert cut == 1 and message.startswith("cut 1: ") and "row 0" in message


def test_smx3_finds_the_split() -> None:
    message, trial = _failure(smx.test_any_split_any_tree, UnscaledMerge(), "softmax_stats",
                              RowsCase(4, 1000, torch.float32, "cpu"))
    assert "falsifying split" in trial.metrics and message.startswith("split (")
    assert "lse_stats: err" in message


def test_kd4_finds_a_large_shift() -> None:
    message, trial = _failure(kd.test_kd_shift_invariance, NoMaxKD(), "kd_loss",
                              RowsCase(8, 1000, torch.float32, "cpu"))
    size, _, with_labels = ast.literal_eval(trial.metrics["falsifying shift"])
    # without labels the defect is right until exp(z / 2) overflows float32 (z ~ 177)
    assert with_labels or abs(size) > 80
    assert message.startswith("shift (")


@pytest.mark.parametrize("test,backend,op,case", [
    (att.test_causal_independence, Honest("online"), "attention", CAUSAL),
    (smx.test_any_split_any_tree, Honest("online"), "softmax_stats", RowsCase(2, 5003, torch.float32, "cpu")),
    (kd.test_kd_shift_invariance, Honest("online"), "kd_loss", RowsCase(8, 1000, torch.float32, "cpu")),
], ids=["ATT-5", "SMX-3", "KD-4"])
def test_search_is_deterministic_per_case(test, backend, op: str, case) -> None:  # noqa: ANN001
    first = run_clause(test, backend, op, case, 11)
    again = run_clause(test, backend, op, case, 11)
    assert first.metrics == again.metrics
    assert [c.err for c in first.comparisons] == [c.err for c in again.comparisons]
