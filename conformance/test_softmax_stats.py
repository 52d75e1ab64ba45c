"""SPEC chapter SMX: softmax statistics and the online-softmax merge (clauses SMX-1 .. SMX-5)."""

from __future__ import annotations

import random

import torch
from hypothesis import strategies as st

from conformance import cases as C
from conformance.checks import call_attention, default_scale
from conformance.properties import falsify
from conformance.spec import clause
from conformance.tolerance import compare
from conformance.trial import Trial, cases
from implementations.base import AttentionCase, BackendLike, InvalidInputError, RowsCase
from implementations.ops import OPS
from implementations.ops.exact import stat_dtype

BLOCKS = (None, 7, 128, 1000)
#: a block length is asked for where it cuts a row into at most this many blocks (block 7 on a row of 65537
#: would be 9363 blocks: the long production rows meet 128 and 1000, the short rows meet 7)
MAX_BLOCKS_PER_ROW = 1024


def _rows(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    shapes = [(4, 1), (4, 7), (8, 128), (4, 1000), (3, 4097)] + ([] if quick else [(2, 65536), (1, 262144)])
    dtypes = b.capabilities.stats_dtypes
    return C.rows_cases(dtypes, device, shapes) + C.production_rows("softmax_stats", dtypes, device)


def _draw_rows(case: RowsCase, g: torch.Generator, spread: float = 3.0) -> torch.Tensor:
    return C.randn((case.rows, case.cols), case.dtype, case.device, g, scale=spread)



def _check_stats(trial: Trial, x: torch.Tensor, m: torch.Tensor, l: torch.Tensor) -> None:
    """m exactly the row max; l and lse = m + log l by the tolerance rule (naive: one-shot float32)."""
    ref_m, ref_l = OPS["softmax_stats"].oracle(x)
    naive_m, naive_l = OPS["softmax_stats"].naive(x, stat_dtype(x.dtype))
    assert m.shape == ref_m.shape and l.shape == ref_l.shape, f"m {tuple(m.shape)}, l {tuple(l.shape)}"
    exact = torch.equal(m.double().cpu(), ref_m)
    assert exact, f"m differs from the row max (max |diff| {float((m.double().cpu() - ref_m).abs().max()):.3e})"
    trial.check(compare("l", l, ref_l, naive_l, dtype=stat_dtype(x.dtype), terms=x.shape[-1]),
                compare("lse_stats", m.double() + torch.log(l.double()), ref_m + torch.log(ref_l),
                        naive_m.double() + torch.log(naive_l.double()), dtype=stat_dtype(x.dtype),
                        terms=x.shape[-1]))


@clause("SMX-1")
@cases("softmax_stats", _rows)
def test_row_statistics(trial: Trial) -> None:
    """`m = max x` (exactly), `l = Σ exp(x - m)`, `lse = m + log l`, over blocks of any size.

    Each of BLOCKS is asked for (None: the backend's own; the others where they cut the row into at most
    MAX_BLOCKS_PER_ROW blocks); a backend may decline a block length with an
    InvalidInputError (recorded in metrics), but its own block must pass. Guards against: l not rescaled
    when the running max grows, the last partial block dropped, m taken from the first block only.
    """
    x = _draw_rows(trial.case, trial.generator())
    declined = []
    for block in (b for b in BLOCKS if b is None or -(-x.shape[1] // b) <= MAX_BLOCKS_PER_ROW):
        try:
            m, l = trial.call("softmax_stats", x, block=block)
        except InvalidInputError as exc:
            if block is None:
                raise
            declined.append(f"{block}: {exc}")
            continue
        _check_stats(trial, x, m, l)
    trial.metrics["declined_blocks"] = declined


def _merge_cases(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return C.rows_cases(b.capabilities.stats_dtypes, device, [(1, 4096)])


def _random_stats(n: int, g: torch.Generator, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = C.randn((n,), dtype, device, g, scale=20.0)
    l = (torch.rand((n,), generator=g, dtype=torch.float64) * 100 + 1).to(dtype).to(device)
    return m, l


@clause("SMX-2")
@cases("softmax_merge", _merge_cases)
def test_merge_algebra(trial: Trial) -> None:
    """`(m1,l1) ⊕ (m2,l2) = (max, l1 e^(m1-m) + l2 e^(m2-m))`: commutative, associative (relative error
    <= 1e-6 in float32), identity (-inf, 0), and (-inf,0) ⊕ (-inf,0) = (-inf,0) without NaN.

    Guards against: exp(-inf - -inf) = NaN on empty partials, a merge that adds l without rescaling.
    """
    case, g = trial.case, trial.generator()
    n, dt, dev = case.cols, stat_dtype(case.dtype), case.device
    (m1, l1), (m2, l2), (m3, l3) = (_random_stats(n, g, dt, dev) for _ in range(3))
    merge = trial.backend.softmax_merge
    ab, ba = trial.call("softmax_merge", m1, l1, m2, l2), merge(m2, l2, m1, l1)
    ref_m, ref_l = OPS["softmax_merge"].oracle(m1, l1, m2, l2)
    assert torch.equal(ab[0].double().cpu(), ref_m), "merged m is not max(m1, m2)"
    trial.check(compare("l", ab[1], ref_l, OPS["softmax_merge"].naive(m1, l1, m2, l2, dt)[1], dtype=dt))

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a.double() - b.double()).abs() / b.double().abs().clamp_min(1e-30)).max())

    left = merge(*merge(m1, l1, m2, l2), m3, l3)
    right = merge(m1, l1, *merge(m2, l2, m3, l3))
    inf = torch.full_like(m1, float("-inf"))
    zero = torch.zeros_like(l1)
    ident = merge(m1, l1, inf, zero)
    empty = merge(inf, zero, inf, zero)
    figures = {"commutative_rel": rel(ab[1], ba[1]), "associative_rel": rel(left[1], right[1]),
               "identity_rel": rel(ident[1], l1)}
    trial.metrics.update(figures)
    problems = []
    if not torch.equal(ab[0], ba[0]) or figures["commutative_rel"] > 1e-6:
        problems.append(f"not commutative (relative {figures['commutative_rel']:.2e})")
    if not torch.equal(left[0], right[0]) or figures["associative_rel"] > 1e-6:
        problems.append(f"not associative within 1e-6 (relative {figures['associative_rel']:.2e})")
    if not torch.equal(ident[0], m1) or figures["identity_rel"] > 1e-6:
        problems.append(f"(-inf, 0) is not an identity (relative {figures['identity_rel']:.2e})")
    if torch.isnan(empty[0]).any() or torch.isnan(empty[1]).any():
        problems.append("(-inf,0) ⊕ (-inf,0) gives NaN")
    elif not (torch.all(empty[0] == float("-inf")) and torch.all(empty[1] == 0)):
        problems.append("(-inf,0) ⊕ (-inf,0) is not (-inf,0)")
    assert not problems, "; ".join(problems)


def _split_cases(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return C.rows_cases(b.capabilities.stats_dtypes, device, [(4, 1000), (2, 5003)])


def _tree_merge(merge, parts: list, rng: random.Random):  # noqa: ANN001, ANN202
    """Merge ``parts`` in a random binary tree order (random adjacent pair each time)."""
    parts = list(parts)
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        parts[i: i + 2] = [merge(*parts[i], *parts[i + 1])]
    return parts[0]


#: splits drawn per SMX-3 case (each costs a backend call per block)
SPLITS = 5


@clause("SMX-3")
@cases("softmax_stats", _split_cases)
def test_any_split_any_tree(trial: Trial) -> None:
    """Any split of a row into blocks, merged in any tree order, equals the one-shot lse.

    A property over the split points: SPLITS splits of 1 to 12 cuts that hypothesis draws from the case's
    seed (and shrinks when one fails), each merged left-to-right, right-to-left and in a random tree, with
    the backend's own softmax_stats per block and its softmax_merge. Guards against: merges that are only
    right for equal block sizes or for left folds.
    """
    x = _draw_rows(trial.case, trial.generator())
    merge = trial.backend.softmax_merge
    ref_m, ref_l = OPS["softmax_stats"].oracle(x)
    naive_m, naive_l = OPS["softmax_stats"].naive(x, stat_dtype(x.dtype))
    naive_lse = naive_m.double() + torch.log(naive_l.double())
    L = x.shape[1]

    def merges_to_one_shot(example: tuple[list[int], random.Random]) -> None:
        cuts, rng = example
        bounds = [0, *cuts, L]
        parts = [trial.call("softmax_stats", x[:, a:b].contiguous()) for a, b in zip(bounds, bounds[1:])]
        orders = {"left": _fold(merge, parts), "right": _fold(merge, parts[::-1]),
                  "random": _tree_merge(merge, parts, rng)}
        for m, l in orders.values():
            trial.check(compare("lse_stats", m.double() + torch.log(l.double()), ref_m + torch.log(ref_l),
                                naive_lse, dtype=stat_dtype(x.dtype), terms=L))

    cuts = st.lists(st.integers(1, L - 1), min_size=1, max_size=min(12, L - 1), unique=True).map(sorted)
    falsify(trial, "split", st.tuples(cuts, st.randoms(use_true_random=False)), merges_to_one_shot, SPLITS)
    trial.metrics["splits"] = SPLITS


def _fold(merge, parts: list):  # noqa: ANN001, ANN202
    acc = parts[0]
    for p in parts[1:]:
        acc = merge(*acc, *p)
    return acc


def _split_kv(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, seqs=((113, 203), (64, 1000)))


@clause("SMX-4")
@cases("attention", _split_kv)
def test_split_kv_merge(trial: Trial) -> None:
    """Attention over two halves of K, V merged by `O = e^(L_a-L) O_a + e^(L_b-L) O_b`,
    `L = logaddexp(L_a, L_b)` equals full attention (split-KV), by the tolerance rule.

    Guards against: an lse that is right on its own but inconsistent with out (e.g. base 2, or
    unscaled), which only shows when partial results are combined.
    """
    case = trial.case
    q, k, v = C.attention_inputs(case, trial.seed)
    cut = random.Random(trial.seed).randint(1, case.Sk - 1)
    oa, la = call_attention(trial, q, k[:, :, :cut].contiguous(), v[:, :, :cut].contiguous(), causal=None)
    ob, lb = call_attention(trial, q, k[:, :, cut:].contiguous(), v[:, :, cut:].contiguous(), causal=None)
    la64, lb64 = la.double(), lb.double()
    L = torch.logaddexp(la64, lb64)
    merged = (torch.exp(la64 - L)[..., None] * oa.double() + torch.exp(lb64 - L)[..., None] * ob.double())
    sc = default_scale(case.D)
    ref_out, ref_lse = OPS["attention"].oracle(q, k, v, causal=None, scale=sc)
    naive_out, naive_lse = OPS["attention"].naive(q, k, v, causal=None, scale=sc, dtype=q.dtype)
    trial.metrics["cut"] = cut
    trial.check(compare("out", merged, ref_out, naive_out, dtype=q.dtype, terms=case.Sk),
                compare("lse", L, ref_lse, naive_lse, dtype=la.dtype, terms=case.Sk))


def _extreme(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return C.rows_cases(b.capabilities.stats_dtypes, device, [(6, 300)])


@clause("SMX-5")
@cases("softmax_stats", _extreme)
def test_extreme_rows(trial: Trial) -> None:
    """Rows of -inf give (-inf, 0); a single finite entry v gives (v, 1); rows of ±1e4 give finite,
    correct statistics (m exact, l by the tolerance rule); never NaN.

    Guards against: exp(-inf - (-inf)) = NaN, overflow of exp(x) without the max subtracted.
    """
    case = trial.case
    x = _draw_rows(case, trial.generator()).clone()
    x[0] = float("-inf")
    x[1] = float("-inf")
    x[1, case.cols // 3] = 2.5
    x[2] = 1e4
    x[3] = -1e4
    x[4] = torch.where(torch.arange(case.cols, device=x.device) % 2 == 0, 1e4, -1e4).to(x.dtype)
    m, l = trial.call("softmax_stats", x)
    problems = []
    if torch.isnan(m).any() or torch.isnan(l).any():
        problems.append("NaN in the statistics")
    if not (m[0] == float("-inf") and l[0] == 0):
        problems.append(f"row of -inf gives ({float(m[0])}, {float(l[0])}), expected (-inf, 0)")
    if not (m[1] == 2.5 and l[1] == 1):
        problems.append(f"single finite entry 2.5 gives ({float(m[1])}, {float(l[1])}), expected (2.5, 1)")
    if not torch.isfinite(l[2:]).all() or not torch.isfinite(m[2:]).all():
        problems.append("non-finite statistics for rows of ±1e4")
    assert not problems, "; ".join(problems)
    _check_stats(trial, x[2:], m[2:], l[2:])
    trial.metrics["rows"] = ["-inf", "single finite", "+1e4", "-1e4", "±1e4", "random"]
