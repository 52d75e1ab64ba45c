"""SPEC chapter WD: reductions against the work-depth cost model (clauses WD-0 .. WD-5)."""

from __future__ import annotations

import math

import numpy as np
import torch

from conformance import cases as C
from conformance.spec import clause
from conformance.tolerance import compare
from conformance.trial import Trial, cases, unsupported
from implementations import schedule as sched
from implementations.base import BackendLike, RowsCase
from implementations.ops import OPS
from implementations.ops.exact import stat_dtype

SIZES = (1, 2, 7, 64, 100, 1000, 4097)
PROCESSORS = (1, 2, 3, 4, 8, 64)


def _sizes(sizes: tuple[int, ...], quick: tuple[int, ...] | None = None, production: bool = False):  # noqa: ANN202
    """Reductions over ``sizes`` (``quick`` in a quick run), plus the production sizes of the device."""
    def make(b: BackendLike, device: str, is_quick: bool) -> list[RowsCase]:
        chosen = quick if (is_quick and quick is not None) else sizes
        dtypes = b.capabilities.reduce_dtypes
        large = C.production_rows("reduce_sum", dtypes, device) if production else []
        return C.rows_cases(dtypes, device, [(1, n) for n in chosen]) + large
    return make


def _schedule(trial: Trial) -> tuple[torch.Tensor, torch.Tensor, sched.Schedule]:
    """Draw x (magnitudes over six decades, so the order of additions shows in the last bits) and reduce it."""
    if trial.backend.capabilities.reduce_schedule is None:
        unsupported("the reduction does not declare its combine schedule")
    g = trial.generator()
    n = trial.case.cols
    magnitudes = torch.pow(10.0, torch.rand((n,), generator=g, dtype=torch.float64) * 6 - 3)
    x = (C.randn((n,), torch.float64, "cpu", g) * magnitudes).to(trial.case.dtype).to(trial.case.device)
    value, schedule = trial.call("reduce_sum", x)
    assert isinstance(schedule, sched.Schedule), f"reduce_sum returned {type(schedule).__name__}, not a Schedule"
    assert schedule.n == n, f"schedule is over {schedule.n} inputs, x has {n}"
    schedule.validate()
    trial.metrics.update({"n": n, "W": schedule.work, "D": schedule.depth, "schedule": schedule.kind})
    return x, value, schedule


@clause("WD-0")
@cases("reduce_sum", _sizes(SIZES, production=True))
def test_model_measures(trial: Trial) -> None:
    """W counts the additions, D the longest dependent chain; every input is counted exactly once, and
    `W >= n - 1`, `ceil(log2 n) <= D <= W` hold for the backend's schedule; the value matches the float64
    sum by the tolerance rule (naive: torch's float32 sum).

    Guards against: schedules that drop or double-count inputs, depths counted in rounds rather than
    dependencies. The value's rounding floor is `sqrt(D)·eps·Σ|x|`: each input is rounded at most D times
    in partial sums bounded by Σ|x| (the condition of the sum).
    """
    x, value, schedule = _schedule(trial)
    n = schedule.n
    counted = schedule.evaluate(np.ones(n), np.float64)
    assert counted == n, f"evaluating the schedule on ones gives {counted}, not n = {n}"
    lower = math.ceil(math.log2(n)) if n > 1 else 0
    assert schedule.work >= n - 1 and lower <= schedule.depth <= max(schedule.work, 0), \
        f"W={schedule.work}, D={schedule.depth} impossible for n={n}"
    ref = OPS["reduce_sum"].oracle(x)
    # each input passes through at most D roundings of partial sums, each bounded by Σ|x| (the condition of
    # the sum), not by |sum|: the floor's noise is sqrt(D)·eps·Σ|x|
    trial.check(compare("sum", value.reshape(()), ref, OPS["reduce_sum"].naive(x, torch.float32), dtype=torch.float32,
                        terms=schedule.depth, summands=float(x.double().abs().sum())))


@clause("WD-1")
@cases("reduce_sum", _sizes((64, 100, 1000, 4097)))
def test_declared_schedule_measures(trial: Trial) -> None:
    """The harness computes W and D from the declared schedule: a reduction does `W = n - 1` additions,
    and a schedule declared as a tree has `D = ceil(log2 n)` (n = 64: W = 63, D = 6).

    Guards against: a "tree" that is really a chain of blocks, redundant additions.
    """
    _, _, schedule = _schedule(trial)
    n = schedule.n
    assert schedule.work == n - 1, f"W = {schedule.work}, expected n - 1 = {n - 1}"
    declared = trial.backend.capabilities.reduce_schedule or ""
    if "tree" in declared and "blocked" not in declared:
        assert schedule.depth == math.ceil(math.log2(n)), \
            f"declared {declared!r} but D = {schedule.depth} != ceil(log2 {n}) = {math.ceil(math.log2(n))}"


@clause("WD-2")
@cases("reduce_sum", _sizes(SIZES + (65536, 1_000_003), quick=SIZES + (65536,), production=True))
def test_kernel_follows_schedule(trial: Trial) -> None:
    """The float32 result is bit-identical to the harness evaluating the declared schedule in float32.

    Float addition is not associative, so a kernel that adds in another order than it declares differs
    in the last bits on inputs spread over six decades. Guards against: declared trees summed sequentially.
    """
    x, value, schedule = _schedule(trial)
    expected = schedule.evaluate(x.cpu().numpy(), np.float32)
    got = np.float32(value.cpu().item())
    trial.metrics["bits_equal"] = bool(got == expected)
    assert got == expected or (np.isnan(got) and np.isnan(expected)), \
        f"kernel gives {got!r}, its declared schedule gives {expected!r} " \
        f"(difference {float(got) - float(expected):.3e})"


@clause("WD-3")
@cases("reduce_sum", _sizes((64, 1000, 4097)))
def test_blocked_schedule_and_brent(trial: Trial) -> None:
    """For a blocked schedule (p workers sum n/p values each, then a tree) the harness reports `W = n - 1`,
    `D = ceil(n/p) - 1 + ceil(log2 p)`; Brent's bound `T_p <= W/p + D` holds for the greedy simulation of
    that schedule and of the backend's own, at every p in PROCESSORS.
    """
    _, _, schedule = _schedule(trial)
    n = schedule.n
    report = {}
    for p in PROCESSORS:
        blocked = sched.blocked(n, p)
        blocks = math.ceil(n / math.ceil(n / p))
        expected_d = math.ceil(n / p) - 1 + math.ceil(math.log2(blocks)) if blocks > 1 else n - 1
        assert blocked.work == n - 1, f"blocked p={p}: W = {blocked.work} != {n - 1}"
        assert blocked.depth == expected_d, f"blocked p={p}: D = {blocked.depth} != {expected_d}"
        for name, s in (("blocked", blocked), ("declared", schedule)):
            t = s.greedy_time(p)
            assert t <= s.work / p + s.depth, f"{name} p={p}: T_p = {t} > W/p + D = {s.work / p + s.depth}"
            report[f"{name}_T{p}"] = t
    trial.metrics.update(report)


def _merge_blocks(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return C.rows_cases(b.capabilities.stats_dtypes, device, [(4, 64), (4, 100), (2, 1000)])


@clause("WD-4")
@cases("softmax_merge", _merge_blocks)
def test_merge_tree_depth(trial: Trial) -> None:
    """b blocks' softmax statistics reduced by a pairwise tree of the backend's SMX-2 merge take
    `ceil(log2 b)` rounds of merges and equal the one-shot statistics (tolerance rule).

    The tree is the harness's pairwise schedule; each round is one vectorised call of the backend's merge.
    """
    case = trial.case
    block = 16
    x = C.randn((case.rows, case.cols * block), case.dtype, case.device, trial.generator(), scale=4.0)
    parts = x.reshape(case.rows, case.cols, block).to(stat_dtype(case.dtype))
    m = parts.amax(-1)
    l = torch.exp(parts - m[..., None]).sum(-1)
    tree = sched.pairwise_tree(case.cols)
    rounds = 0
    for dst, _, other_idx in tree.rounds:
        dst_t, other = torch.as_tensor(dst, device=x.device), torch.as_tensor(other_idx, device=x.device)
        m_new, l_new = trial.call("softmax_merge", m[:, dst_t], l[:, dst_t], m[:, other], l[:, other])
        m[:, dst_t], l[:, dst_t] = m_new, l_new
        rounds += 1
    b = case.cols
    assert rounds == tree.depth == math.ceil(math.log2(b)), f"{rounds} rounds for b={b}"
    ref_m, ref_l = OPS["softmax_stats"].oracle(x)
    naive_m, naive_l = OPS["softmax_stats"].naive(x, stat_dtype(case.dtype))
    trial.metrics.update({"blocks": b, "rounds": rounds})
    trial.check(compare("lse_stats", m[:, 0].double() + torch.log(l[:, 0].double()), ref_m + torch.log(ref_l),
                        naive_m.double() + torch.log(naive_l.double()), dtype=torch.float32,
                        terms=x.shape[-1]))


def _scan(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    dtypes = b.capabilities.reduce_dtypes
    return (C.rows_cases(dtypes, device, [(1, n) for n in (1, 7, 64, 1000, 1024)])
            + C.production_rows("prefix_sum", dtypes, device))


#: WD-5's bounds per declared kind: (W, D) as functions of n (exact for Hillis-Steele and sequential,
#: upper bounds for Blelloch)
SCAN_MEASURES = {
    "hillis-steele": lambda n: (n * math.ceil(math.log2(n)) - sum(2 ** d for d in range(math.ceil(math.log2(n)))),
                                math.ceil(math.log2(n))),
    "blelloch": lambda n: (2 * (n - 1), 2 * math.ceil(math.log2(n))),
    "sequential": lambda n: (n - 1, n - 1),
}


@clause("WD-5")
@cases("prefix_sum", _scan)
def test_scans(trial: Trial) -> None:
    """Scans, where a backend provides `prefix_sum(x) -> (y, schedule)`: Hillis-Steele
    `W = n·log2 n - (n - 1)`, `D = log2 n` (n a power of two; the sum over rounds otherwise); Blelloch
    `W <= 2(n - 1)`, `D <= 2·log2 n`; y equals the float64 cumulative sum by the tolerance rule and is
    bit-identical to the declared schedule evaluated in float32.

    Guards against: a scan declared parallel but computed sequentially (or the reverse), an exclusive scan
    returned for an inclusive one.
    """
    g = trial.generator()
    n = trial.case.cols
    x = C.randn((n,), trial.case.dtype, trial.case.device, g)
    y, schedule = trial.call("prefix_sum", x)
    assert isinstance(schedule, sched.ScanSchedule), f"prefix_sum returned {type(schedule).__name__}"
    assert schedule.kind in SCAN_MEASURES, f"unknown scan kind {schedule.kind!r} (known: {list(SCAN_MEASURES)})"
    trial.metrics.update({"n": n, "W": schedule.work, "D": schedule.depth, "schedule": schedule.kind})
    trial.check(compare("scan", y, OPS["prefix_sum"].oracle(x), OPS["prefix_sum"].naive(x, x.dtype),
                        dtype=torch.float32, terms=n))
    expected = schedule.evaluate(x.cpu().numpy(), np.float32)
    assert np.array_equal(y.cpu().numpy(), expected), "y differs from the declared schedule evaluated in float32"
    if n > 1:
        work, depth = SCAN_MEASURES[schedule.kind](n)
        if schedule.kind == "blelloch":
            assert schedule.work <= work and schedule.depth <= depth, f"W={schedule.work}, D={schedule.depth}"
        else:
            assert (schedule.work, schedule.depth) == (work, depth), \
                f"{schedule.kind}: W={schedule.work}, D={schedule.depth}, expected W={work}, D={depth}"
