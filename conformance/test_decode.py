"""SPEC chapter DEC: decode over a paged KV cache, split-KV (clauses DEC-1 .. DEC-3)."""

from __future__ import annotations

import torch

from conformance import variant_cases as V
from conformance.checks import expect_input_error
from conformance.spec import clause
from conformance.trial import Trial, cases
from conformance.variant_checks import check_decode
from implementations.variants import DecodeCase


@clause("DEC-1")
@cases("attention_decode_paged", V.decode_cases)
def test_paged_decode(trial: Trial) -> None:
    """out and lse equal dense bottom-right causal attention over each sequence's keys gathered from its pages:
    pages drawn at random from a larger pool (any order), kv lengths off page multiples and below one page,
    page sizes 16, 64 and 24, Sq 1, 4 and 16, GQA; the backend chooses the split count.

    Guards against: pages read in pool order, the last page read whole, the queries' causal offset taken from
    the page count rather than the length.
    """
    check_decode(trial, V.paged_inputs(trial.case, trial.seed), trial.case.num_splits)


@clause("DEC-2")
@cases("attention_decode_paged", V.split_cases)
def test_split_kv_merge(trial: Trial) -> None:
    """With `num_splits` 1, 2, 3 and 12 (more splits than any sequence has pages) the merged result
    equals the dense oracle: partials merged by `O = Σ e^(L_s - L) O_s`, `L = logaddexp L_s`, empty splits
    weighing 0.

    Guards against: partials averaged or summed without rescaling by their statistics, NaN from an empty split.
    """
    out, lse = check_decode(trial, V.paged_inputs(trial.case, trial.seed), trial.case.num_splits)
    assert not bool(torch.isnan(out).any()), "NaN in out"


def _bad(b, device: str, quick: bool) -> list[DecodeCase]:  # noqa: ANN001
    return V.split_cases(b, device, quick)[:1]


@clause("DEC-3")
@cases("attention_decode_paged", _bad)
def test_bad_paged_input(trial: Trial) -> None:
    """Malformed paged inputs get a clear error: 17 queries, a kv length below Sq, a kv length beyond the block
    table's pages, a page index outside the pool among the used pages, an int64 table, `num_splits=0`.
    """
    q, k, v, table, lens = V.paged_inputs(trial.case, trial.seed)
    fn = trial.backend.attention_decode_paged
    page = trial.case.page_size
    short, long, outside = lens.clone(), lens.clone(), table.clone()
    short[0] = q.shape[2] - 1
    long[0] = table.shape[1] * page + 1
    outside[0, 0] = k.shape[0]
    q17 = torch.cat([q] * 9, dim=2)[:, :, :17]
    problems = [
        expect_input_error(lambda: fn(q17, k, v, table, lens), ("16", "sq", "queries"), "Sq = 17"),
        expect_input_error(lambda: fn(q, k, v, table, short), ("kv_lens",), "kv length below Sq"),
        expect_input_error(lambda: fn(q, k, v, table, long), ("kv_lens", "pages"), "kv length beyond the table"),
        expect_input_error(lambda: fn(q, k, v, outside, lens), ("page",), "page index outside the pool"),
        expect_input_error(lambda: fn(q, k, v, table.long(), lens), ("int32", "dtype"), "int64 block table"),
        expect_input_error(lambda: fn(q, k, v, table, lens, num_splits=0), ("num_splits",), "num_splits=0"),
    ]
    problems = [p for p in problems if p]
    trial.metrics["bad_inputs_checked"] = 6
    assert not problems, "; ".join(problems)
