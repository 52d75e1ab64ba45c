"""SPEC chapter KD: the knowledge-distillation loss (clauses KD-1 .. KD-8)."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from conformance import cases as C
from conformance.checks import expect_input_error
from conformance.memory import peak_extra
from conformance.properties import falsify
from conformance.spec import clause
from conformance.tolerance import compare
from conformance.trial import Trial, cases, unsupported
from implementations.base import BackendLike, RowsCase
from implementations.ops import OPS
from implementations.ops.exact import stat_dtype

IGNORE = -100



def _logits(case: RowsCase, g: torch.Generator, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    s = C.randn((case.rows, case.cols), case.dtype, case.device, g, scale=scale)
    t = C.randn((case.rows, case.cols), case.dtype, case.device, g, scale=scale)
    return s, t


def _labels(case: RowsCase, g: torch.Generator) -> torch.Tensor:
    y = torch.randint(0, case.cols, (case.rows,), generator=g)
    y[:: 3] = IGNORE  # every third row ignored
    return y.to(case.device)


def check_kd(trial: Trial, s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float = 1.0,
             labels: torch.Tensor | None = None, outputs: tuple[str, ...] = ("loss", "ds"),
             loss_magnitude: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Call kd_loss and apply the tolerance rule to loss and ds (naive: the unfused formula in float32).

    ``loss_magnitude`` sets the rounding floor's magnitude where the loss is 0 by cancellation (KD-3)."""
    kwargs = {"temperature": temperature, "alpha": alpha, "labels": labels, "ignore_index": IGNORE}
    loss, ds = trial.call("kd_loss", s, t, **kwargs)
    ref = OPS["kd_loss"].oracle(s, t, **kwargs)
    naive = OPS["kd_loss"].naive(s, t, **kwargs, dtype=stat_dtype(s.dtype))
    got = {"loss": loss, "ds": ds}
    floor_dtype = {"loss": stat_dtype(s.dtype), "ds": s.dtype}
    magnitude = {"loss": loss_magnitude, "ds": None}
    trial.check(*(compare(name, got[name], r, n, dtype=floor_dtype[name], terms=s.shape[-1],
                          magnitude=magnitude[name])
                  for name, r, n in zip(("loss", "ds"), ref, naive) if name in outputs))
    return loss, ds


def _kd1(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return C.rows_cases(b.capabilities.kd_dtypes, device, [(4, 1000), (16, 4097), (3, 50257)])


@clause("KD-1")
@cases("kd_loss", _kd1)
def test_kd_loss_matches_oracle(trial: Trial) -> None:
    """`α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)` averaged over rows whose label is not
    ignore_index (α = 1 without labels, even when another α is passed), for T in {0.5, 1, 2.5}, α in {1, 0.4},
    [N, V] and [B, L, V] inputs.

    Equals `F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, reduction="batchmean") * T²`
    on flattened rows (checked on the oracle in the suite's own tests). Guards against: a missing T²,
    `reduction="mean"` (off by V), "batchmean" over [B, L, V] (off by L), KL the wrong way round.
    """
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g)
    labels = _labels(case, g)
    for T in (0.5, 1.0, 2.5):
        check_kd(trial, s, t, temperature=T)
        check_kd(trial, s, t, temperature=T, alpha=0.4, labels=labels)
    check_kd(trial, s, t, temperature=2.0, alpha=0.4)  # no labels: alpha is 1, whatever is passed
    if case.rows % 2 == 0:  # [B, L, V] logits are flattened to rows
        s3, t3 = s.reshape(2, case.rows // 2, case.cols), t.reshape(2, case.rows // 2, case.cols)
        check_kd(trial, s3, t3, temperature=2.0)
        check_kd(trial, s3, t3, temperature=2.0, alpha=0.4, labels=labels.reshape(2, -1))


def _kd2(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return _kd1(b, device, quick) + C.production_rows("kd_loss", b.capabilities.kd_dtypes, device)


@clause("KD-2")
@cases("kd_loss", _kd2)
def test_kd_gradient(trial: Trial) -> None:
    """d loss / d s of the KD term is `α·T·(softmax(s/T) - softmax(t/T)) / N_rows` and sums to 0 over V.

    Checked against that closed form in float64 by the tolerance rule, and each row's sum against the
    rounding floor. Guards against: a gradient missing its 1/T or T factor, or normalised by N·V.
    """
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g)
    for T in (0.5, 2.5):
        loss, ds = trial.call("kd_loss", s, t, temperature=T)
        s64, t64 = s.double().cpu(), t.double().cpu()
        closed = T * (torch.softmax(s64 / T, -1) - torch.softmax(t64 / T, -1)) / case.rows
        naive = OPS["kd_loss"].naive(s, t, temperature=T, dtype=stat_dtype(s.dtype))[1]
        trial.check(compare("ds", ds, closed, naive, dtype=s.dtype, terms=case.cols))
        row_sums = ds.double().sum(-1).abs().max().item()
        floor = case.cols * torch.finfo(s.dtype).eps * float(closed.abs().max())
        trial.metrics[f"max_row_sum_T{T}"] = row_sums
        assert row_sums <= 4 * floor, f"ds rows sum to {row_sums:.3e}, not 0 (floor {floor:.3e})"


def _small(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    return C.rows_cases(b.capabilities.kd_dtypes, device, [(8, 1000)])


@clause("KD-3")
@cases("kd_loss", _small)
def test_kd_nonnegative_and_zero_at_shift(trial: Trial) -> None:
    """loss >= 0 on random logits; loss = 0 (by the tolerance rule) when s = t + c with c per row.

    Guards against: KL(p_s ‖ p_t) instead of KL(p_t ‖ p_s) mixed with a cross-entropy that does not
    cancel, and a softmax that is not shift-invariant (no max subtraction in one of the two).
    """
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g)
    for T in (0.5, 1.0, 4.0):
        loss, _ = trial.call("kd_loss", s, t, temperature=T)
        assert float(loss) >= 0, f"loss {float(loss)} < 0 at T={T}"
        c = C.randn((case.rows, 1), case.dtype, case.device, g, scale=10.0)
        # the loss is a sum of p_t·(log p_t - log p_s) terms of size ~log V cancelling to 0: its rounding
        # floor is taken at T²·log V, the magnitude of what cancels
        check_kd(trial, (t + c).to(case.dtype), t, temperature=T, outputs=("loss",),
                 loss_magnitude=T * T * math.log(case.cols))


#: shifts drawn per KD-4 case (each costs a backend call)
SHIFTS = 6


@clause("KD-4")
@cases("kd_loss", _small)
def test_kd_shift_invariance(trial: Trial) -> None:
    """Adding a per-row constant to s or to t leaves the loss unchanged (with and without labels).

    A property over the shift: SHIFTS examples that hypothesis draws from the case's seed (and shrinks when
    one fails), each a size up to ±1000, the side shifted and whether labels count; the per-row constants
    are that size times 1 + N(0, 1)/4. Compared with the unshifted oracle by the tolerance rule (naive: the
    unfused formula on the shifted logits), whose floor counts the rounding of log-probabilities at the
    shifted logits' size. Guards against: logsumexp without the max, where large shifts
    overflow or lose every digit.
    """
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g)
    labels = _labels(case, g)
    spread = 1 + C.randn((case.rows, 1), torch.float64, "cpu", g) / 4
    T = 2.0

    def loss_unchanged(example: tuple[float, str, bool]) -> None:
        size, side, with_labels = example
        alpha = 0.4 if with_labels else 1.0
        kwargs = {"temperature": T, "alpha": alpha, "labels": labels if with_labels else None, "ignore_index": IGNORE}
        ref = OPS["kd_loss"].oracle(s, t, **kwargs)[0]
        c = (size * spread).to(case.dtype).to(case.device)
        ss, tt = ((s + c).to(case.dtype), t) if side == "s" else (s, (t + c).to(case.dtype))
        loss, _ = trial.call("kd_loss", ss, tt, **kwargs)
        naive = OPS["kd_loss"].naive(ss, tt, **kwargs, dtype=stat_dtype(case.dtype))[0]
        # a kernel's log-softmax of logits of size Z (z - lse with lse stored) rounds to eps·Z/T: the KD term
        # T²·Σ p_t (log p_t - log p_s) moves by up to 2·α·T·eps·Z, the cross-entropy by (1 - α)·eps·Z
        Z = max(float(ss.abs().max()), float(tt.abs().max()))
        trial.check(compare("loss", loss, ref, naive, dtype=stat_dtype(case.dtype), terms=case.cols,
                            propagated=(2 * alpha * T + (1 - alpha)) * Z))

    shifts = st.tuples(st.floats(-1000.0, 1000.0, allow_nan=False), st.sampled_from(("s", "t")), st.booleans())
    falsify(trial, "shift", shifts, loss_unchanged, SHIFTS)


TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0, 16.0, 64.0, 256.0)


@clause("KD-5")
@cases("kd_loss", _small)
def test_soft_target_entropy_grows_with_t(trial: Trial) -> None:
    """The entropy of softmax(z/T) does not decrease as T grows and tends to log V.

    Read through the backend: with a constant student row (uniform softmax), `KL(p_t ‖ u) = log V - H(p_t)`,
    so `H = log V - loss / T²`. Guards against: a temperature applied to one side only, or as a product.
    """
    case, g = trial.case, trial.generator()
    _, t = _logits(case, g)
    s = torch.full_like(t, 0.37)
    logv = math.log(case.cols)
    entropies = []
    for T in TEMPERATURES:
        loss, _ = trial.call("kd_loss", s, t, temperature=T)
        entropies.append(logv - float(loss) / (T * T))
    trial.metrics.update({"T": list(TEMPERATURES), "entropy": entropies, "log_V": logv})
    tol = 1e-4 * logv
    drops = [(a, b) for a, b in zip(entropies, entropies[1:]) if b < a - tol]
    assert not drops, f"entropy decreases as T grows: {drops}"
    assert abs(entropies[-1] - logv) < 1e-3 * logv, f"entropy at T={TEMPERATURES[-1]} is {entropies[-1]}, " \
                                                    f"not near log V = {logv}"


HIGH_T = (1.0, 2.0, 4.0, 8.0)


@clause("KD-6")
@cases("kd_loss", _small)
def test_high_temperature_limit(trial: Trial) -> None:
    """As T grows, `T²·KL` tends to `‖c‖² / (2V)` with c the mean-centred `s - t` (Hinton §2.1).

    The backend's loss must match the oracle at each T in HIGH_T (tolerance rule) and be within 1% of the
    limit at T = 8 (the approach is O(1/T) and need not be monotone; beyond T = 8 float32 rounding of the
    shrinking KL outweighs it). The loss's rounding floor is taken at T²·log V, the size of the terms whose
    difference T²·KL is. Guards against: a T² factor that is really T (87% off at T = 8).
    """
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g, scale=1.0)
    d = (s.double() - t.double()).cpu()
    c = d - d.mean(-1, keepdim=True)
    limit = float((c.pow(2).sum(-1) / (2 * case.cols)).mean())
    distances = []
    for T in HIGH_T:
        # T²·KL is a small difference of terms of size T²·log V: the loss's rounding floor is taken there (KD-3)
        loss, _ = check_kd(trial, s, t, temperature=T, outputs=("loss",), loss_magnitude=T * T * math.log(case.cols))
        distances.append(abs(float(loss) - limit) / limit)
    trial.metrics.update({"T": list(HIGH_T), "relative_distance": distances, "limit": limit})
    assert distances[-1] < 0.01, f"relative distance {distances[-1]:.4f} at T={HIGH_T[-1]} is not < 1%"


def _fused(b: BackendLike, device: str, quick: bool) -> list[RowsCase]:
    vocab = (4097, 50257) if quick else (4097, 50257, 131071, 131072)
    return C.rows_cases(b.capabilities.kd_dtypes, device, [(8, v) for v in vocab])


@clause("KD-7")
@cases("kd_loss", _fused)
def test_fused_equals_unfused(trial: Trial) -> None:
    """A fused or chunked KD loss equals the unfused one for V not a multiple of its chunk, up to V = 131072,
    and holds no [N, V] float32 intermediate beyond the gradient it returns.

    Values: the tolerance rule against the float64 oracle. Memory: peak extra during the call stays below
    the gradient plus half an [N, V] float32 array. Backends not declaring `kd_fused` are exempt.
    """
    if not trial.backend.capabilities.kd_fused:
        unsupported("does not declare kd_fused: exempt from KD-7")
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g)
    labels = _labels(case, g)
    check_kd(trial, s, t, temperature=2.0, alpha=0.4, labels=labels)
    sealed = trial.seal("kd_loss", s, t, temperature=2.0)
    _, peak = peak_extra(sealed.run, case.device)
    sealed.verify()
    grad_bytes = s.numel() * s.element_size()
    budget = grad_bytes + case.rows * case.cols * 4 // 2
    trial.metrics.update({"peak_extra_bytes": peak.bytes, "gradient_bytes": grad_bytes, "budget_bytes": budget,
                          "probe": peak.probe})
    assert peak.bytes <= budget, f"peak extra {peak.bytes} B > gradient {grad_bytes} B + half an [N, V] float32 " \
                                 f"array (budget {budget} B)"


@clause("KD-8")
@cases("kd_loss", _small)
def test_kd_bad_input(trial: Trial) -> None:
    """T <= 0, shape mismatch, labels out of range (other than ignore_index) get a clear error.

    Guards against: a NaN loss for T = 0, a silent broadcast of mismatched logits, an out-of-range label
    read past the row.
    """
    case, g = trial.case, trial.generator()
    s, t = _logits(case, g)
    kd = trial.backend.kd_loss
    bad_label = _labels(case, g)
    bad_label[1] = case.cols
    neg_label = _labels(case, g)
    neg_label[1] = -5
    problems = [
        expect_input_error(lambda: kd(s, t, temperature=0.0), ("temperature",), "T = 0"),
        expect_input_error(lambda: kd(s, t, temperature=-1.0), ("temperature",), "T < 0"),
        expect_input_error(lambda: kd(s, t, temperature=float("nan")), ("temperature",), "T = NaN"),
        expect_input_error(lambda: kd(s, t[:, :-1], temperature=1.0), ("shape", "mismatch"), "V mismatch"),
        expect_input_error(lambda: kd(s, t[:-1], temperature=1.0), ("shape", "mismatch"), "N mismatch"),
        expect_input_error(lambda: kd(s, t, temperature=1.0, alpha=0.5, labels=bad_label), ("label",),
                           "label = V"),
        expect_input_error(lambda: kd(s, t, temperature=1.0, alpha=0.5, labels=neg_label), ("label",),
                           "label = -5"),
        expect_input_error(lambda: kd(s, t, temperature=1.0, alpha=0.5, labels=bad_label[:-1]),
                           ("label", "shape"), "labels shape"),
    ]
    problems = [p for p in problems if p]
    assert not problems, "; ".join(problems)
