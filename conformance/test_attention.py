"""SPEC chapter ATT: exact attention, forward (clauses ATT-1 .. ATT-11)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import strategies as st

from conformance import cases as C
from conformance.checks import call_attention, check_forward, default_scale, expect_input_error, memory_growth
from conformance.properties import falsify
from conformance.spec import clause
from conformance.tolerance import compare
from conformance.trial import SealedCall, Trial, cases, unsupported
from implementations.base import AttentionCase, BackendLike
from implementations.ops import OPS

MASKED_SEQS = ((239, 1), (200, 77), (64, 63), (5, 3))


def _att1(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.attention_matrix(b, device, quick) + C.production_attention(b, device, quick)


def _att2(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.attention_matrix(b, device, quick)


@clause("ATT-1")
@cases("attention", _att1)
def test_forward_matches_oracle(trial: Trial) -> None:
    """`out = softmax(scale QKᵀ) V` for every declared dtype, head dim and (Sq, Sk), ragged sizes included.

    Guards against: wrong masking of ragged tile edges, head dims that are no power of two, a missing or
    misplaced rescaling of the running accumulator, unwritten output elements (outputs are poisoned).
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_forward(trial, q, k, v, causal=None, outputs=("out",))


@clause("ATT-2")
@cases("attention", _att2)
def test_lse_natural_log(trial: Trial) -> None:
    """`lse[b,h,i] = logsumexp_j(scale q_i·k_j)` in natural log, float32, shape [B, Hq, Sq].

    Guards against: lse in base 2 (kernels that work with exp2), lse of the unscaled scores, the running
    max returned instead of the log-sum-exp, a padded or transposed lse.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_forward(trial, q, k, v, causal=None, outputs=("lse",))


@clause("ATT-3")
@cases("attention", C.causal_matrix)
def test_causal_variants(trial: Trial) -> None:
    """Top-left: key j visible to query i iff j <= i; bottom-right: iff j <= i + Sk - Sq (out and lse).

    Guards against: the two alignments confused (they differ whenever Sq != Sk), an off-by-one diagonal.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_forward(trial, q, k, v, causal=trial.case.causal)


def _default_causal(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    """Cases in the declared default variant (so a backend's limits on it apply), at D = 32."""
    return C.small_attention(b, device, quick, causal_variants=(b.capabilities.causal_default,),
                             seqs=((113, 203), (203, 113), (128, 128)), D=32, every_dtype=False)


@clause("ATT-3")
@cases("attention", _default_causal)
def test_causal_true_is_declared_default(trial: Trial) -> None:
    """`causal=True` means the variant the backend declares as `causal_default`, and that variant is right.

    Guards against: an API whose `causal=True` silently means the other alignment than documented.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    default = trial.backend.capabilities.causal_default
    trial.metrics["causal_default"] = default
    out_true, lse_true = call_attention(trial, q, k, v, causal=True)
    check_forward(trial, q, k, v, causal=default)
    sc = default_scale(q.shape[-1])
    ref_out, ref_lse = OPS["attention"].oracle(q, k, v, causal=default, scale=sc)
    naive_out, naive_lse = OPS["attention"].naive(q, k, v, causal=default, scale=sc, dtype=q.dtype)
    trial.check(compare("out", out_true, ref_out, naive_out, dtype=q.dtype, terms=k.shape[2]),
                compare("lse", lse_true, ref_lse, naive_lse, dtype=lse_true.dtype, terms=k.shape[2]))


def _masked(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, causal_variants=("bottom_right",), seqs=MASKED_SEQS)


@clause("ATT-4")
@cases("attention", _masked, premise=C.has_masked_rows)
def test_fully_masked_rows(trial: Trial) -> None:
    """Rows with no visible key (bottom-right, Sq > Sk: rows i < Sq - Sk): out row 0, lse -inf, no NaN.

    Guards against: 0/0 = NaN from an empty softmax, a row max of -inf turning exp(x - m) into NaN.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    out, lse = call_attention(trial, q, k, v, causal="bottom_right")
    masked = trial.case.Sq - trial.case.Sk
    nan_out, nan_lse = int(torch.isnan(out).sum()), int(torch.isnan(lse).sum())
    nonzero = int((out[:, :, :masked] != 0).sum())
    not_neg_inf = int((lse[:, :, :masked] != float("-inf")).sum())
    trial.metrics.update({"masked_rows": masked, "nan_out": nan_out, "nan_lse": nan_lse,
                          "nonzero_masked_out": nonzero, "masked_lse_not_-inf": not_neg_inf})
    problems = [f"{text} ({count} elements)" for count, text in (
        (nan_out, "NaN in out"), (nan_lse, "NaN in lse"), (nonzero, "nonzero out on fully masked rows"),
        (not_neg_inf, "lse != -inf on fully masked rows")) if count]
    assert not problems, "; ".join(problems)
    check_forward(trial, q, k, v, causal="bottom_right")


#: cuts drawn per ATT-5 case (each costs a backend call)
CUTS = 4


def _independence(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, causal_variants=("top_left", "bottom_right"),
                             seqs=((128, 128), (113, 203), (203, 113)), every_dtype=False)


@clause("ATT-5")
@cases("attention", _independence)
def test_causal_independence(trial: Trial) -> None:
    """Changing K or V at positions invisible to query i leaves out[i] bit-identical.

    A property over the cut: K and V are redrawn from position `cut` on, for CUTS cuts that hypothesis
    draws from the case's seed (and shrinks when one fails); every row that sees no key at or after `cut`
    must not move by a single bit. Guards against: masking applied after the row max or after exp (garbage
    leaks in), reads past the causal boundary.
    """
    case = trial.case
    q, k, v = C.attention_inputs(case, trial.seed)
    out1, _ = call_attention(trial, q, k, v, causal=case.causal)
    offset = 0 if case.causal == "top_left" else case.Sk - case.Sq  # row i's last visible key is i + offset
    rows_checked = []

    def unchanged_before(cut: int) -> None:
        g = trial.generator(salt=3 + cut)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, cut:] = C.randn(tuple(k2[:, :, cut:].shape), case.dtype, case.device, g, scale=5.0)
        v2[:, :, cut:] = C.randn(tuple(v2[:, :, cut:].shape), case.dtype, case.device, g, scale=5.0)
        out2, _ = call_attention(trial, q, k2, v2, causal=case.causal)
        rows = [i for i in range(case.Sq) if i + offset < cut]
        rows_checked.append(len(rows))
        changed = [i for i in rows if not torch.equal(out1[:, :, i], out2[:, :, i])]
        assert not changed, f"{len(changed)} of {len(rows)} rows changed although they see no redrawn key " \
                            f"(first: row {changed[0]})"

    first = max(1, offset + 1)  # the smallest cut that leaves a row independent of it
    assert first < case.Sk, "no row is independent of a cut (shape too small)"
    falsify(trial, "cut", st.integers(first, case.Sk - 1), unchanged_before, CUTS)
    trial.metrics["rows_checked"] = rows_checked


def _gqa(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    out = []
    for heads in ((4, 2), (6, 3), (4, 1)):
        out += C.small_attention(b, device, quick, causal_variants=(None, "bottom_right"),
                                 seqs=((113, 203),), heads=heads)
    return out


@clause("ATT-6")
@cases("attention", _gqa)
def test_gqa_equals_repeated_kv(trial: Trial) -> None:
    """With Hk < Hq, out equals MHA on K, V repeated per group (query head h reads KV head h // (Hq/Hk)).

    Checked against the oracle (which repeats K, V explicitly) with the tolerance rule. Guards against:
    `h % Hk` instead of `h // (Hq // Hk)`, groups laid out the wrong way round.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_forward(trial, q, k, v, causal=trial.case.causal)


def _tiles(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    tiles = b.capabilities.tiles or ((64, 64),)
    base = C.small_attention(b, device, quick, causal_variants=(None, "bottom_right"),
                             seqs=((113, 203), (127, 513)), D=59, every_dtype=False)
    return [AttentionCase(c.B, c.Hq, c.Hk, c.Sq, c.Sk, c.D, c.dtype, c.device, c.causal, tuple(t))
            for c in base for t in tiles]


@clause("ATT-7")
@cases("attention", _tiles)
def test_tile_sizes(trial: Trial) -> None:
    """Every tile size (block_m, block_n) the backend exposes passes the ATT-1 rule.

    Guards against: edge handling that is right for the default tile only, rows straddling tiles.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    check_forward(trial, q, k, v, causal=trial.case.causal)


SCALES = (0.01, 1.0, 3.7, -0.5, -2.0)


def _scales(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, causal_variants=(None, "top_left"), seqs=((113, 203),))


@clause("ATT-8")
@cases("attention", _scales)
def test_custom_scale(trial: Trial) -> None:
    """A custom `scale` (far from 1/sqrt(D), and negative) is honoured: out and lse for each of SCALES.

    Guards against: the scale ignored in favour of 1/sqrt(D), applied only to out or only to lse, its
    sign lost (abs, or a max computed before scaling a negative scale).
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    wrong = []
    for scale in SCALES:  # every scale is tried and recorded, so a finding names the scales it concerns
        try:
            check_forward(trial, q, k, v, causal=trial.case.causal, scale=scale)
            trial.metrics[f"scale {scale:g}"] = "ok"
        except AssertionError as exc:
            trial.metrics[f"scale {scale:g}"] = str(exc)
            wrong.append(f"scale {scale:g}: {exc}")
    assert not wrong, "; ".join(wrong)


def _large(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return [AttentionCase(2, 2, 2, Sq, Sk, 64, torch.float32, device, causal)
            for causal in (None, "top_left") for Sq, Sk in ((113, 203), (128, 128))]


@clause("ATT-9")
@cases("attention", _large)
def test_large_logits(trial: Trial) -> None:
    """Logits up to |scale·q·k| = 1e4 in float32 neither overflow nor lose the row max (out and lse).

    The scale is chosen so the largest logit is 1e4 in magnitude; the rule's floor counts the rounding of
    logits of that size (about 1e4·eps each, carried to out with gain up to 2·max|v|). Guards against: exp
    without the max subtracted, a running max that starts at 0 instead of -inf, overflow in a rescaling
    factor, logits held in a narrower type than float32.
    """
    q, k, v = C.attention_inputs(trial.case, trial.seed)
    logits = q.double() @ k.double().transpose(-1, -2)
    scale = 1e4 / float(logits.abs().max())
    trial.metrics["max_abs_logit"] = 1e4
    check_forward(trial, q, k, v, causal=trial.case.causal, scale=scale)


#: the largest sequence length of the memory-growth sweep (conformance.cases.memory_lengths)
MEMORY_S = {"cpu": 4096, "cuda": 16384}


@clause("ATT-10")
@cases("attention", C.memory_cases(lambda caps: caps.dtypes, MEMORY_S), premise=C.memory_sized)
def test_linear_memory(trial: Trial) -> None:
    """A `memory="linear"` backend holds no Sq x Sk buffer: peak extra memory during the forward stays below
    outputs + a tenth of the float32 score matrix at the largest S, with a log-log slope <= 1.1 over S.

    Probe: the CUDA allocator's peak counter; on the CPU tracemalloc (NumPy) and the resident-set
    high-water mark. Backends declaring `memory="quadratic"` are exempt (reported unsupported with that).
    """
    if trial.backend.capabilities.memory != "linear":
        unsupported(f"declares memory={trial.backend.capabilities.memory!r}: exempt from ATT-10")

    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[Callable[[], SealedCall], int]:
        out_bytes = q.numel() * q.element_size() + q.shape[0] * q.shape[1] * q.shape[2] * 4  # out + lse
        return (lambda: trial.seal("attention", q, k, v, causal=None)), out_bytes

    memory_growth(trial, prepare)


def _bad(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    return C.small_attention(b, device, quick, seqs=((17, 33),), every_dtype=False)


@clause("ATT-11")
@cases("attention", _bad)
def test_bad_input_is_named(trial: Trial) -> None:
    """Bad input gets a clear error naming the problem, never a crash or a silent wrong answer.

    Cases: batch mismatch, K/V shape mismatch, Hq % Hk != 0, an undeclared dtype, an undeclared head dim,
    a 3-D tensor, an unknown causal name, device mismatch (when a GPU is present); a non-contiguous Q
    must either be computed correctly or refused with a message saying "contiguous".
    """
    case = trial.case
    q, k, v = C.attention_inputs(case, trial.seed)
    attn = trial.backend.attention
    caps = trial.backend.capabilities
    problems = [
        expect_input_error(lambda: attn(q, k[:1], v[:1]), ("batch", "shape", "mismatch"), "batch mismatch"),
        expect_input_error(lambda: attn(q, k, v[:, :, :-1]), ("shape", "mismatch", "differ"), "k/v shape mismatch"),
        expect_input_error(lambda: attn(q[:, :3], k[:, :2], v[:, :2]), ("hq % hk", "heads", "divis", "group"),
                           "Hq % Hk != 0"),
        expect_input_error(lambda: attn(q[0], k[0], v[0]), ("dimension", "shape", "4-d", "4d", "ndim"),
                           "3-D input"),
        expect_input_error(lambda: attn(q, k, v, causal="diagonal"), ("causal",), "unknown causal name"),
    ]
    bad_dtype = next((d for d in (torch.float64, torch.float16, torch.bfloat16, torch.float32, torch.int32)
                      if d not in caps.dtypes), None)
    if bad_dtype is not None:
        problems.append(expect_input_error(lambda: attn(q.to(bad_dtype), k.to(bad_dtype), v.to(bad_dtype)),
                                           ("dtype",), f"undeclared dtype {bad_dtype}"))
    lo, hi = caps.head_dims
    bad_d = hi + 8 if hi < 4096 else None
    if bad_d is not None:
        pad = (0, bad_d - case.D)
        problems.append(expect_input_error(
            lambda: attn(*(torch.nn.functional.pad(x, pad) for x in (q, k, v))),
            ("head dim", "head_dim", "headdim", "d="), f"undeclared head dim {bad_d}"))
    if torch.cuda.is_available():
        other = "cpu" if case.device == "cuda" else "cuda"
        problems.append(expect_input_error(lambda: attn(q, k.to(other), v), ("device",), "device mismatch"))
    problems = [p for p in problems if p]
    # non-contiguous q: right answer or a refusal that says so
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    try:
        check_forward(trial, qt, k, v, causal=None)
    except AssertionError as exc:
        problems.append(f"non-contiguous q: wrong result ({exc})")
    except Exception as exc:
        if "contiguous" not in str(exc).lower():
            problems.append(f"non-contiguous q: {type(exc).__name__}({str(exc)[:200]!r}) does not say 'contiguous'")
    trial.metrics["bad_inputs_checked"] = 8 + (bad_dtype is not None) + (bad_d is not None)
    assert not problems, "; ".join(problems)
