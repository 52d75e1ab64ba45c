"""SPEC chapter DIST: context-parallel attention (clauses DIST-1 .. DIST-7).

Each case runs on a group of rank processes (``conformance.dist_runner``: gloo on the CPU, NCCL on CUDA, one
GPU per rank); the ranks' shards of the outputs are put back at their global positions and judged by the
single-device rules of ATT-1 and GRAD-1 against the oracle of the global problem.
"""

from __future__ import annotations

import torch

from conformance import cases as C
from conformance.checks import judge_backward, judge_forward
from conformance.dist_cases import DistCase, dist_cases, dist_inputs
from conformance.dist_runner import DistJob, RankResult, pool_for
from conformance.spec import clause
from conformance.trial import Trial, cases, unsupported
from implementations.base import BackendLike
from implementations.sequence_layout import positions

OP = "attention_context_parallel"
BACKWARD_OP = "attention_context_parallel_backward"
#: (Hq, Hk, Sq, Sk, D) of the quick matrix; the full one adds longer and wider problems
QUICK_SHAPES = ((2, 2, 64, 64, 32), (2, 2, 61, 61, 16))
FULL_SHAPES = QUICK_SHAPES + ((4, 4, 515, 515, 64), (2, 2, 1024, 1024, 128))
#: DIST-7: few queries over many keys, so K and V dominate what a rank holds
MEMORY_SHAPE = (2, 2, 64, 4096, 128)


def _dtype(b: BackendLike, device: str) -> torch.dtype:
    return C.primary_dtype(b.capabilities.dtypes, device)


def _shapes(quick: bool) -> tuple[tuple[int, int, int, int, int], ...]:
    return QUICK_SHAPES if quick else FULL_SHAPES


def _forward(b: BackendLike, device: str, quick: bool) -> list[DistCase]:
    return dist_cases(device, _dtype(b, device), _shapes(quick))


def _causal(b: BackendLike, device: str, quick: bool) -> list[DistCase]:
    return dist_cases(device, _dtype(b, device), ((2, 2, 40, 72, 32), (2, 2, 72, 40, 32)),
                      causal=("top_left", "bottom_right"))


def _gqa(b: BackendLike, device: str, quick: bool) -> list[DistCase]:
    return dist_cases(device, _dtype(b, device), ((4, 2, 48, 48, 32), (4, 1, 48, 48, 32)))


def _uneven(b: BackendLike, device: str, quick: bool) -> list[DistCase]:
    dtype = _dtype(b, device)
    return (dist_cases(device, dtype, ((2, 2, 61, 53, 32),), worlds=(4,), layouts=("contiguous",), skewed=True)
            + dist_cases(device, dtype, ((2, 2, 61, 53, 32),), worlds=(4,), layouts=("zigzag",)))


def _worlds(b: BackendLike, device: str, quick: bool) -> list[DistCase]:
    return dist_cases(device, _dtype(b, device), ((2, 2, 64, 64, 32),), worlds=(1, 2, 4), causal=("top_left",))


def _memory(b: BackendLike, device: str, quick: bool) -> list[DistCase]:
    return dist_cases(device, _dtype(b, device), (MEMORY_SHAPE,), worlds=(4,), layouts=("contiguous",),
                      causal=(None,))


def run_case(trial: Trial, *, backward: bool, probe_memory: bool = False) -> list[RankResult]:
    """Run the trial's case on its ranks; fail naming each rank's error."""
    case = trial.case
    assert isinstance(case, DistCase)
    if case.device == "cuda" and torch.cuda.device_count() < case.world:
        unsupported(f"{case.world} ranks need {case.world} CUDA devices, {torch.cuda.device_count()} here")
    if backward and case.dtype not in trial.backend.capabilities.backward_dtypes:
        unsupported(f"no context-parallel backward declared for {case.dtype}")
    results = pool_for(trial.backend, case.device).run(
        DistJob(case, trial.seed, backward=backward, probe_memory=probe_memory))
    errors = [f"rank {r.rank}: {r.error}" for r in results if r.error]
    assert not errors, "\n".join(errors)
    return results


def assemble(results: list[RankResult], name: str, lengths: list[int], case: DistCase,
             like: torch.Tensor) -> torch.Tensor:
    """The ranks' shards of output ``name`` put back at their global positions along the sequence dim."""
    whole = torch.full(like.shape, float("nan"), dtype=results[0].outputs[name].dtype, device=like.device)
    for r in results:
        whole[:, :, positions(case.seq_layout, lengths, r.rank).to(like.device)] = r.outputs[name].to(like.device)
    return whole


def check_dist(trial: Trial, *, backward: bool) -> None:
    """DIST-1 (and DIST-2 with ``backward``): every rank's shards against the global oracle's rows."""
    case = trial.case
    assert isinstance(case, DistCase)
    results = run_case(trial, backward=backward)
    q, k, v, dout = dist_inputs(case, trial.seed)
    ql, kl = case.q_lengths(), case.k_lengths()
    trial.metrics.update({"world": case.world, "layout": case.seq_layout, "q_lengths": ql, "k_lengths": kl})
    lse_like = torch.empty(q.shape[:3] + (1,), device=q.device)
    out = assemble(results, "out", ql, case, q)
    lse = assemble([_unsqueezed(r) for r in results], "lse", ql, case, lse_like).squeeze(-1)
    judge_forward(trial, q, k, v, out, lse, causal=case.causal, op=OP)
    if backward:
        grads = (assemble(results, "dq", ql, case, q), assemble(results, "dk", kl, case, k),
                 assemble(results, "dv", kl, case, v))
        judge_backward(trial, q, k, v, dout, grads, causal=case.causal, op=BACKWARD_OP)


def _unsqueezed(result: RankResult) -> RankResult:
    return RankResult(result.rank, {"lse": result.outputs["lse"].unsqueeze(-1)})


@clause("DIST-1")
@cases(OP, _forward)
def test_context_parallel_forward(trial: Trial) -> None:
    """Each rank's out and lse equal the single-device oracle's rows at its positions (contiguous, zig-zag).

    Guards against: a merge across ranks that forgets to rescale the running output (e^(L_a - L)), shards put
    back at the wrong positions, a zig-zag layout whose second chunk is the wrong one, lse left per block.
    """
    check_dist(trial, backward=False)


@clause("DIST-2")
@cases(OP, _forward)
def test_context_parallel_gradients(trial: Trial) -> None:
    """Each rank's dq, dk, dv equal the oracle's autograd gradient rows at its positions.

    Guards against: dK, dV partial sums that never return to their owner, a block backward that normalises
    P by its own block's statistics instead of the global lse, delta taken from a block's partial output.
    """
    check_dist(trial, backward=True)


@clause("DIST-3")
@cases(OP, _causal)
def test_context_parallel_causal_alignments(trial: Trial) -> None:
    """Top-left and bottom-right masks on global positions (Sq != Sk), forward and backward, both layouts.

    Guards against: masks applied to local positions (every rank masking as if it held the sequence's start),
    the bottom-right offset taken from local lengths, an off-by-one diagonal in the zig-zag's second chunk.
    """
    check_dist(trial, backward=True)


@clause("DIST-4")
@cases(OP, _gqa)
def test_context_parallel_gqa(trial: Trial) -> None:
    """GQA/MQA: forward and gradients equal the single-device results, dk and dv summed over each group.

    Guards against: K/V heads expanded per query head before sending (then dk, dv are not group sums), a ring
    whose receive buffers assume Hk = Hq.
    """
    check_dist(trial, backward=True)


@clause("DIST-5")
@cases(OP, _uneven)
def test_context_parallel_uneven_shards(trial: Trial) -> None:
    """Skewed contiguous shards and zig-zag shards of a length no multiple of 2W, forward and backward.

    Guards against: receive buffers sized from the rank's own shard, offsets computed as rank·S/W.
    """
    check_dist(trial, backward=True)


@clause("DIST-6")
@cases(OP, _worlds)
def test_context_parallel_world_sizes(trial: Trial) -> None:
    """The same causal problem over 1, 2 and 4 ranks meets DIST-1 and DIST-2 each time.

    Guards against: a ring that only works for two ranks (sends and receives to the same peer), a one-rank
    group that sends to itself and hangs.
    """
    check_dist(trial, backward=True)


@clause("DIST-7")
@cases(OP, _memory)
def test_no_rank_holds_full_kv(trial: Trial) -> None:
    """Over 4 ranks each rank's peak extra memory in the forward stays below (W-1)/W of the full K and V.

    Guards against: a context-parallel attention that all-gathers K and V (correct values, no memory saved).
    """
    case = trial.case
    assert isinstance(case, DistCase)
    results = run_case(trial, backward=False, probe_memory=True)
    kv_bytes = 2 * case.B * case.Hk * case.Sk * case.D * torch.empty((), dtype=case.dtype).element_size()
    budget = kv_bytes * (case.world - 1) // case.world
    peaks = [r.peak_bytes or 0 for r in results]
    trial.metrics.update({"peak_extra_bytes": peaks, "budget_bytes": budget, "full_kv_bytes": kv_bytes,
                          "probe": results[0].probe})
    over = [f"rank {r}: {p} B" for r, p in enumerate(peaks) if p >= budget]
    assert not over, (f"peak extra memory at or above {budget} B, the other ranks' K and V shards "
                      f"((W-1)/W of the full {kv_bytes} B): {', '.join(over)}")
