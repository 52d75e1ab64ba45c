"""SPEC chapter VLEN: packed variable-length batches (clauses VLEN-1 .. VLEN-5)."""

from __future__ import annotations

import torch

from conformance import cases as C
from conformance import variant_cases as V
from conformance.checks import expect_input_error
from conformance.spec import clause
from conformance.trial import Trial, cases
from conformance.variant_checks import check_varlen_backward, check_varlen_forward, varlen_kwargs
from implementations.variants import VarlenCase


@clause("VLEN-1")
@cases("attention_varlen", V.varlen_cases)
def test_each_sequence_on_its_own(trial: Trial) -> None:
    """Each sequence of the packed batch equals dense attention of that sequence alone (out and lse), with its
    own causal alignment and window; lengths ragged, Sq_b != Sk_b, GQA in every other batch.

    Guards against: one causal offset for the whole batch, offsets read from the wrong array, tiles that span
    two sequences.
    """
    check_varlen_forward(trial, V.packed_inputs(trial.case, trial.seed))


def _redrawn_others(case: VarlenCase, inputs: tuple[torch.Tensor, ...], watched: int,
                    g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``inputs`` with every sequence but ``watched`` redrawn (five times larger)."""
    q, k, v, cu_q, cu_k = (x.clone() for x in inputs)
    for tensor, cu in ((q, cu_q), (k, cu_k), (v, cu_k)):
        keep = torch.zeros(tensor.shape[0], dtype=torch.bool)
        keep[int(cu[watched]):int(cu[watched + 1])] = True
        n = int((~keep).sum())
        tensor[~keep.to(tensor.device)] = C.randn((n, *tensor.shape[1:]), case.dtype, case.device, g, scale=5.0)
    return q, k, v, cu_q, cu_k


def _call_all(trial: Trial, inputs: tuple[torch.Tensor, ...], backward: bool) -> list[torch.Tensor]:
    """out, lse (and with ``backward``, dq, dk, dv for a dout drawn from the trial's seed)."""
    case = trial.case
    lengths = (max(case.seqlens_q), max(case.seqlens_k))
    kwargs = varlen_kwargs(case)
    out, lse = trial.call("attention_varlen", *inputs, *lengths, **kwargs)
    if not backward:
        return [out, lse]
    dout = C.randn(tuple(out.shape), case.dtype, case.device, trial.generator(salt=7))
    q, k, v, cu_q, cu_k = inputs
    grads = trial.call("attention_varlen_backward", q, k, v, out, lse, dout, cu_q, cu_k, *lengths, **kwargs)
    return [out, lse, *grads]


@clause("VLEN-2")
@cases("attention_varlen", V.leakage_cases)
def test_no_leakage(trial: Trial) -> None:
    """Redrawing every other sequence's q, k and v leaves the middle sequence's out and lse bit-identical, and,
    where the backend declares the varlen backward (for the case's dtype), its rows of dq and its keys' dk, dv.

    Guards against: tiles that read past a sequence's end into its neighbour, dk/dv summed across sequences.
    """
    case = trial.case
    inputs = V.packed_inputs(case, trial.seed)
    backward = case.dtype in trial.backend.capabilities.varlen_backward_dtypes and callable(
        getattr(trial.backend, "attention_varlen_backward", None))
    first = _call_all(trial, inputs, backward)
    second = _call_all(trial, _redrawn_others(case, inputs, 1, trial.generator(salt=3)), backward)
    rows = slice(int(inputs[3][1]), int(inputs[3][2]))
    keys = slice(int(inputs[4][1]), int(inputs[4][2]))
    names = ["out", "lse", "dq", "dk", "dv"]
    views = [lambda x: x[rows], lambda x: x[:, rows], lambda x: x[rows], lambda x: x[keys], lambda x: x[keys]]
    moved = [name for name, view, a, b in zip(names, views, first, second) if not torch.equal(view(a), view(b))]
    trial.metrics["checked"] = names[:len(first)]
    assert not moved, f"the watched sequence's {', '.join(moved)} changed when only other sequences were redrawn"


@clause("VLEN-3")
@cases("attention_varlen", V.zero_length_cases)
def test_zero_length_sequences(trial: Trial) -> None:
    """Sequences with no queries, with no keys, and with neither: rows with no key get out 0 and lse -inf, no
    NaN anywhere, and the other sequences are right (VLEN-1's check on the whole batch).

    Guards against: a division by a zero length, a skipped program leaving its rows unwritten (poisoned).
    """
    case = trial.case
    inputs = V.packed_inputs(case, trial.seed)
    out, lse = check_varlen_forward(trial, inputs)
    starts = [int(x) for x in inputs[3]]
    empty_rows = [r for b, n in enumerate(case.seqlens_k) if n == 0 for r in range(starts[b], starts[b + 1])]
    problems = []
    if bool(torch.isnan(out).any()) or bool(torch.isnan(lse).any()):
        problems.append("NaN in out or lse")
    if empty_rows and (bool((out[empty_rows] != 0).any()) or bool((lse[:, empty_rows] != float("-inf")).any())):
        problems.append(f"rows {empty_rows} of sequences with no keys are not out 0, lse -inf")
    trial.metrics["rows_without_keys"] = len(empty_rows)
    assert not problems, "; ".join(problems)


@clause("VLEN-4")
@cases("attention_varlen_backward", lambda b, d, quick: V.varlen_cases(b, d, quick, backward=True))
def test_varlen_gradients(trial: Trial) -> None:
    """dq, dk, dv of each sequence equal the gradients of its own dense attention (multiplier 3).

    Guards against: dk, dv accumulated across sequences, a backward with other masks than its forward.
    """
    check_varlen_backward(trial, V.packed_inputs(trial.case, trial.seed))


def _bad(b, device: str, quick: bool) -> list[VarlenCase]:  # noqa: ANN001
    return V.zero_length_cases(b, device, quick)[:1]


@clause("VLEN-5")
@cases("attention_varlen", _bad)
def test_bad_packed_input(trial: Trial) -> None:
    """Malformed offsets get a clear error: int64 offsets, a decreasing one, not starting at 0, not ending at the
    packed length, different sequence counts for q and k, `max_seqlen_q` below the longest sequence.
    """
    case = trial.case
    q, k, v, cu_q, cu_k = V.packed_inputs(case, trial.seed)
    mq, mk = max(case.seqlens_q), max(case.seqlens_k)
    fn = trial.backend.attention_varlen
    swapped = cu_q.clone()
    swapped[1], swapped[2] = cu_q[2], cu_q[1] - 1
    fewer = torch.cat([cu_k[:-2], cu_k[-1:]])  # the last two key sequences as one: one sequence fewer
    problems = [
        expect_input_error(lambda: fn(q, k, v, cu_q.long(), cu_k, mq, mk), ("int32", "dtype"), "int64 cu_seqlens"),
        expect_input_error(lambda: fn(q, k, v, swapped, cu_k, mq, mk), ("decreas", "cu_seqlens"), "decreasing"),
        expect_input_error(lambda: fn(q, k, v, cu_q + 1, cu_k, mq, mk), ("start", "cu_seqlens"), "not from 0"),
        expect_input_error(lambda: fn(q[:-1], k, v, cu_q, cu_k, mq, mk), ("end", "length", "cu_seqlens"),
                           "not ending at total_q"),
        expect_input_error(lambda: fn(q, k, v, cu_q, fewer, mq, mk), ("sequences",), "sequence counts differ"),
        expect_input_error(lambda: fn(q, k, v, cu_q, cu_k, mq - 1, mk), ("max_seqlen",), "max_seqlen_q too small"),
    ]
    problems = [p for p in problems if p]
    trial.metrics["bad_inputs_checked"] = 6
    assert not problems, "; ".join(problems)
