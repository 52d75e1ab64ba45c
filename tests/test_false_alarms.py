"""No false alarm on a correct kernel: each numerical clause passes the correct backends of ``tests/honest.py``
(the oracle's formulas in the working dtype, and online-softmax / chunked formulations) on every case it
draws, over many seeds.

Hypothesis draws, per clause, one of the clause's own cases (its case generator, full matrix), a seed and a
formulation, and runs the clause's test function on them as the conformance plugin would; a failure is
shrunk and printed with its seed (``Falsifying example: ...``). The draw is derandomized, so CI sees the same
examples every run. ``ATTNSPEC_FALSE_ALARM_EXAMPLES`` sets the examples per clause: 8 by default (CI), 100 or
more for the long run (``ATTNSPEC_FALSE_ALARM_EXAMPLES=100 pytest tests/test_false_alarms.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from conformance import cases as casegen
from conformance import test_attention as att
from conformance import test_gradients as grad
from conformance import test_kd_loss as kd
from conformance import test_softmax_stats as smx
from conformance import test_work_depth as wd
from conformance.spec import clause_of
from conformance.trial import Trial
from implementations.base import BackendLike, Case
from tests.honest import FORMULATIONS, Honest, run_clause

EXAMPLES = int(os.environ.get("ATTNSPEC_FALSE_ALARM_EXAMPLES", "8"))


@dataclass(frozen=True)
class Checked:
    """A clause's test function, the operation it calls and its case generator."""

    test: Callable[[Trial], None]
    op: str
    make: Callable[[BackendLike, str, bool], list[Case]]

    @property
    def id(self) -> str:
        return f"{clause_of(self.test)}-{self.test.__name__.removeprefix('test_')}"


NUMERICAL = (
    Checked(att.test_forward_matches_oracle, "attention", att._att1),
    Checked(att.test_lse_natural_log, "attention", att._att2),
    Checked(att.test_causal_variants, "attention", casegen.causal_matrix),
    Checked(att.test_gqa_equals_repeated_kv, "attention", att._gqa),
    Checked(att.test_custom_scale, "attention", att._scales),
    Checked(att.test_large_logits, "attention", att._large),
    Checked(grad.test_gradients_match_oracle, "attention_backward", grad._grad1),
    Checked(smx.test_row_statistics, "softmax_stats", smx._rows),
    Checked(smx.test_any_split_any_tree, "softmax_stats", smx._split_cases),
    Checked(smx.test_split_kv_merge, "attention", smx._split_kv),
    Checked(kd.test_kd_loss_matches_oracle, "kd_loss", kd._kd1),
    Checked(kd.test_kd_nonnegative_and_zero_at_shift, "kd_loss", kd._small),
    Checked(kd.test_kd_shift_invariance, "kd_loss", kd._small),
    Checked(kd.test_high_temperature_limit, "kd_loss", kd._small),
    Checked(wd.test_model_measures, "reduce_sum", wd._sizes(wd.SIZES)),
    Checked(wd.test_scans, "prefix_sum", wd._scan),
)


def _supported(checked: Checked) -> list[Case]:
    """The clause's full-matrix cases that the correct backends declare (the others would be *unsupported*)."""
    backend = Honest()
    return [c for c in checked.make(backend, "cpu", False) if not backend.not_supported_reasons(checked.op, c)]


@pytest.mark.parametrize("checked", NUMERICAL, ids=lambda c: c.id)
def test_correct_kernels_pass(checked: Checked) -> None:
    cases = _supported(checked)
    assert cases, f"{checked.id}: no case the correct backends support"

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(case=st.sampled_from(cases), seed=st.integers(0, 2**31 - 1), formulation=st.sampled_from(FORMULATIONS))
    def passes(case: Case, seed: int, formulation: str) -> None:
        note(f"reproduce: run_clause({checked.test.__name__}, Honest({formulation!r}), {checked.op!r}, {case}, {seed})")
        run_clause(checked.test, Honest(formulation), checked.op, case, seed)

    passes()
