"""Tests of the Triton backend (``implementations/triton``) against float64 oracles.

By default the kernels run on the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1`` is set here,
before Triton is imported) on small shapes. With ``ATTNSPEC_TRITON_CUDA=1`` the same tests run compiled on
the CUDA device, on larger shapes. Tolerances follow SPEC.md's rule: ``err(backend) <= mult * err(naive_t)
+ floor``, with ``naive_t`` the materialising implementation in the inputs' dtype with a float32 softmax.
"""

from __future__ import annotations

import math
import os
import zlib

ON_CUDA = os.environ.get("ATTNSPEC_TRITON_CUDA") == "1"
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
if ON_CUDA and not torch.cuda.is_available():
    pytest.skip("ATTNSPEC_TRITON_CUDA=1 but no CUDA device", allow_module_level=True)

from implementations.base import BackendUnavailable, InvalidInputError, poisoned_outputs  # noqa: E402
from implementations.schedule import pairwise_tree  # noqa: E402
from implementations.triton import backends  # noqa: E402
from implementations.triton.autograd import triton_attention  # noqa: E402
from implementations.triton.kd_loss import kd_loss  # noqa: E402
from implementations.triton.reduce import (  # noqa: E402
    GPU_REDUCE,
    INTERPRETER_REDUCE,
    SCHEDULE_KIND,
    strided_schedule,
    strided_sum,
)

DEVICE = "cuda" if ON_CUDA else "cpu"
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


@pytest.fixture(scope="module")
def backend():
    return backends()


def generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from the test case, so every case draws its own fresh inputs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


# ------------------------------------------------------------------------------------------------
# oracles


def masked_scores(q: torch.Tensor, k: torch.Tensor, causal: str | None, scale: float) -> torch.Tensor:
    """``scale * Q K^T`` with GQA heads expanded and hidden keys at -inf (ATT-3, ATT-6)."""
    group = q.shape[1] // k.shape[1]
    s = (q @ k.repeat_interleave(group, 1).transpose(-1, -2)) * scale
    if causal is not None:
        sq, sk = s.shape[-2:]
        off = sk - sq if causal == "bottom_right" else 0
        i = torch.arange(sq, device=s.device)[:, None]
        j = torch.arange(sk, device=s.device)[None, :]
        s = s.masked_fill(j > i + off, float("-inf"))
    return s


def attention_math(q, k, v, causal, scale, softmax_dtype):
    """Materialising attention: scores in q's dtype, softmax in ``softmax_dtype``, P V in q's dtype."""
    s = masked_scores(q, k, causal, scale).to(softmax_dtype)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])  # hidden rows: p = 0
    group = q.shape[1] // k.shape[1]
    out = p.to(q.dtype) @ v.repeat_interleave(group, 1)
    return out, lse


def oracle(q, k, v, causal, scale, dout=None):
    """float64 CPU reference ``(out, lse)`` and, with ``dout``, autograd ``(dq, dk, dv)``."""
    q64, k64, v64 = (x.detach().cpu().double().requires_grad_(dout is not None) for x in (q, k, v))
    out, lse = attention_math(q64, k64, v64, causal, scale, torch.float64)
    if dout is None:
        return out.detach(), lse.detach(), None
    out.backward(dout.cpu().double())
    return out.detach(), lse.detach(), (q64.grad, k64.grad, v64.grad)


def naive(q, k, v, causal, scale, dout=None):
    """The SPEC's ``naive_t``: materialising, in q's dtype, float32 softmax; grads by autograd."""
    qn, kn, vn = (x.detach().clone().requires_grad_(dout is not None) for x in (q, k, v))
    out, lse = attention_math(qn, kn, vn, causal, scale, torch.float32)
    if dout is None:
        return out.detach(), lse.detach(), None
    out.backward(dout)
    return out.detach(), lse.detach(), (qn.grad, kn.grad, vn.grad)


def err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |x - ref|`` over entries where ref is finite; x must be finite there and equal elsewhere."""
    x = x.detach().cpu().double()
    ref = ref.detach().cpu().double()
    finite = torch.isfinite(ref)
    assert torch.isfinite(x[finite]).all(), "non-finite value where the oracle is finite"
    assert torch.equal(x[~finite], ref[~finite]), "mismatch where the oracle is infinite"
    return float((x - ref)[finite].abs().max()) if finite.any() else 0.0


def check(name: str, got: torch.Tensor, ref: torch.Tensor, naive_value: torch.Tensor, mult: float) -> None:
    """SPEC tolerance rule with a floor of 4 ulps of ``got``'s dtype at the oracle's magnitude."""
    finite = ref[torch.isfinite(ref)]
    magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    floor = 4 * torch.finfo(got.dtype).eps * max(magnitude, 1e-3)
    e, e_naive = err(got, ref), err(naive_value, ref)
    assert e <= mult * e_naive + floor, f"{name}: err {e:.3e} > {mult} x naive {e_naive:.3e} + floor {floor:.2e}"


# ------------------------------------------------------------------------------------------------
# attention cases: (dtype, B, Hq, Hk, Sq, Sk, D, causal)

CPU_CASES = [
    (F32, 1, 4, 2, 113, 203, 40, None),
    (BF16, 1, 2, 1, 128, 77, 64, "bottom_right"),  # Sq > Sk: fully masked rows (ATT-4)
    (F16, 1, 2, 2, 100, 128, 16, "top_left"),
    (BF16, 1, 4, 2, 65, 130, 40, "top_left"),
    (F16, 1, 3, 1, 97, 61, 64, None),
    (F32, 1, 1, 1, 1, 239, 16, "bottom_right"),
    (BF16, 1, 2, 2, 127, 128, 40, "bottom_right"),
]
CUDA_CASES = [
    (BF16, 2, 4, 2, 113, 203, 40, None),
    (BF16, 1, 4, 1, 1023, 1024, 128, "top_left"),
    (BF16, 1, 2, 2, 2048, 2048, 128, "top_left"),
    (BF16, 2, 4, 4, 512, 256, 64, "bottom_right"),
    (BF16, 1, 2, 1, 1024, 1023, 80, "bottom_right"),
    (BF16, 1, 2, 2, 239, 1, 256, None),
    (BF16, 1, 2, 2, 127, 513, 256, "top_left"),
    (BF16, 2, 2, 1, 3, 799, 16, None),
    (F16, 1, 4, 2, 1024, 1024, 64, "top_left"),
    (F16, 1, 2, 2, 128, 217, 128, None),
    (F32, 1, 2, 1, 113, 203, 40, "bottom_right"),
    (F32, 1, 2, 2, 512, 512, 128, None),
]
CASES = CUDA_CASES if ON_CUDA else CPU_CASES


def case_id(case: tuple) -> str:
    dtype, B, Hq, Hk, Sq, Sk, D, causal = case
    return f"{str(dtype)[6:]}-B{B}H{Hq}k{Hk}-{Sq}x{Sk}-D{D}-{causal or 'full'}"


def make_inputs(case: tuple, tag: str = ""):
    dtype, B, Hq, Hk, Sq, Sk, D, causal = case
    gen = generator(case, tag)
    return (randn((B, Hq, Sq, D), dtype, gen), randn((B, Hk, Sk, D), dtype, gen), randn((B, Hk, Sk, D), dtype, gen))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_matches_oracle(backend, case):
    """ATT-1, ATT-2, ATT-3, ATT-4, ATT-6: out and natural-log lse within the tolerance rule."""
    dtype, *_, D, causal = case
    q, k, v = make_inputs(case)
    scale = 1 / math.sqrt(D)
    with poisoned_outputs():
        out, lse = backend.attention(q, k, v, causal=causal, scale=scale)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    ref_out, ref_lse, _ = oracle(q, k, v, causal, scale)
    n_out, n_lse, _ = naive(q, k, v, causal, scale)
    check("out", out, ref_out, n_out, 2)
    check("lse", lse, ref_lse, n_lse, 2)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_backward_matches_oracle(backend, case):
    """GRAD-1, GRAD-4, GRAD-5: dq, dk, dv within 3x the naive error; delta = rowsum(dout * out)."""
    dtype, *_, D, causal = case
    q, k, v = make_inputs(case, "bwd")
    scale = 1 / math.sqrt(D)
    out, lse = backend.attention(q, k, v, causal=causal, scale=scale)
    dout = randn(tuple(q.shape), dtype, generator(case, "dout"))
    with poisoned_outputs():
        grads = backend.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale)
        delta = backend.attention_delta(out, dout)
    _, _, ref = oracle(q, k, v, causal, scale, dout)
    _, _, nai = naive(q, k, v, causal, scale, dout)
    for name, g, r, n, x in zip(("dq", "dk", "dv"), grads, ref, nai, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype
        check(name, g, r, n, 3)
    ref_delta = (dout.double() * out.double()).sum(-1)
    assert float((delta.double() - ref_delta).abs().max()) <= 1e-5 * max(1.0, float(ref_delta.abs().max()))


def test_fully_masked_rows(backend):
    """ATT-4, GRAD-5: bottom-right with Sq > Sk leaves rows with no key: out 0, lse -inf, dq 0, no NaN."""
    case = (F32, 1, 2, 1, 40, 24, 16, "bottom_right")
    q, k, v = make_inputs(case)
    out, lse = backend.attention(q, k, v, causal="bottom_right")
    hidden = 40 - 24
    assert torch.all(out[:, :, :hidden] == 0) and torch.all(lse[:, :, :hidden] == float("-inf"))
    assert torch.isfinite(lse[:, :, hidden:]).all()
    dout = torch.randn_like(out)
    dq, dk, dv = backend.attention_backward(q, k, v, out, lse, dout, causal="bottom_right")
    assert torch.all(dq[:, :, :hidden] == 0)
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


def test_causal_default_is_top_left(backend):
    """ATT-3: causal=True means the declared default, top-left."""
    case = (F32, 1, 1, 1, 48, 80, 16, "top_left")
    q, k, v = make_inputs(case)
    assert backend.capabilities.causal_default == "top_left"
    assert torch.equal(backend.attention(q, k, v, causal=True)[0], backend.attention(q, k, v, causal="top_left")[0])


def test_causal_independence(backend):
    """ATT-5: K, V at positions hidden from query i do not change out[i] by a single bit."""
    case = (BF16, 1, 2, 2, 96, 96, 32, "top_left")
    q, k, v = make_inputs(case)
    out, _ = backend.attention(q, k, v, causal="top_left")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 50:] = torch.randn_like(k2[:, :, 50:])
    v2[:, :, 50:] = torch.randn_like(v2[:, :, 50:])
    out2, _ = backend.attention(q, k2, v2, causal="top_left")
    assert torch.equal(out[:, :, :50], out2[:, :, :50])


def test_custom_scale_and_large_logits(backend):
    """ATT-8, ATT-9: a negative scale, and float32 logits near 1e4, are honoured without overflow."""
    case = (F32, 1, 2, 2, 37, 70, 16, None)
    q, k, v = make_inputs(case)
    for scale in (-0.7, 3.0, 1e4 / 16):
        out, lse = backend.attention(q, k, v, scale=scale)
        ref_out, ref_lse, _ = oracle(q, k, v, None, scale)
        n_out, n_lse, _ = naive(q, k, v, None, scale)
        check(f"out scale={scale}", out, ref_out, n_out, 2)
        check(f"lse scale={scale}", lse, ref_lse, n_lse, 2)


def test_every_declared_tile(backend):
    """ATT-7: every exposed (block_m, block_n) gives a correct forward and backward."""
    case = (BF16, 1, 2, 1, 45, 80, 40, "bottom_right") if not ON_CUDA else (BF16, 1, 2, 1, 77, 150, 40, "bottom_right")
    q, k, v = make_inputs(case)
    dout = torch.randn_like(q)
    _, _, ref = oracle(q, k, v, "bottom_right", 0.2, dout)
    n_out, n_lse, nai = naive(q, k, v, "bottom_right", 0.2, dout)
    ref_out, ref_lse, _ = oracle(q, k, v, "bottom_right", 0.2)
    for tiles in backend.capabilities.tiles:
        out, lse = backend.attention(q, k, v, causal="bottom_right", scale=0.2, tiles=tiles)
        check(f"out {tiles}", out, ref_out, n_out, 2)
        check(f"lse {tiles}", lse, ref_lse, n_lse, 2)
        grads = backend.attention_backward(q, k, v, out, lse, dout, causal="bottom_right", scale=0.2, tiles=tiles)
        for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, nai):
            check(f"{name} {tiles}", g, r, n, 3)


def test_backward_is_deterministic(backend):
    """GRAD-6: GQA gradients are summed in registers, so repeats are bit-identical."""
    case = (BF16, 1, 4, 1, 64, 96, 32, None)
    q, k, v = make_inputs(case)
    out, lse = backend.attention(q, k, v)
    dout = torch.randn_like(out)
    first = backend.attention_backward(q, k, v, out, lse, dout)
    for _ in range(3):
        again = backend.attention_backward(q, k, v, out, lse, dout)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_autograd_function(backend):
    """GRAD-2: ``triton_attention`` trains through autograd and saves only q, k, v, out, lse."""
    case = (F32, 1, 2, 1, 50, 70, 16, "top_left")
    q, k, v = (x.requires_grad_() for x in make_inputs(case))
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = triton_attention(q, k, v, causal=True)
    assert len(saved) == 5 and all(t.numel() < 50 * 70 for t in saved if t.dim() == 3)
    dout = torch.randn_like(out)
    out.backward(dout)
    ref_out, ref_lse, ref = oracle(q, k, v, "top_left", 1 / 4, dout)
    _, _, nai = naive(q, k, v, "top_left", 1 / 4, dout)
    for name, g, r, n in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), ref, nai):
        check(name, g, r, n, 3)


def test_bad_input_is_rejected(backend):
    """ATT-11, KD-8: clear errors."""
    q = torch.randn(1, 3, 16, 16, device=DEVICE)
    k = torch.randn(1, 2, 16, 16, device=DEVICE)
    with pytest.raises(InvalidInputError, match="Hq % Hk"):
        backend.attention(q, k, k)
    with pytest.raises(InvalidInputError, match="head dim"):
        backend.attention(torch.randn(1, 1, 4, 8, device=DEVICE), *(torch.randn(1, 1, 4, 8, device=DEVICE),) * 2)
    with pytest.raises(InvalidInputError, match="temperature"):
        backend.kd_loss(q[0, 0], q[0, 0], temperature=0.0)
    with pytest.raises(InvalidInputError, match="tile"):
        backend.attention(q, q, q, tiles=(3, 5))


# ------------------------------------------------------------------------------------------------
# softmax statistics


def stats_oracle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.cpu().double()
    m = x.max(1).values
    return m, torch.exp(x - torch.where(torch.isinf(m), 0.0, m)[:, None]).sum(1)


@pytest.mark.parametrize("block", [None, 7, 64])
def test_softmax_stats(backend, block):
    """SMX-1, SMX-5: exact max, l within float32 noise of the float64 oracle, for odd block sizes."""
    cols = 4099 if ON_CUDA else 700
    x = randn((6, cols), F32, generator("stats", block))
    x[1] = float("-inf")
    x[2] = float("-inf")
    x[2, 17] = 3.0
    x[3] *= 1e4
    x[4, ::2] = float("-inf")
    with poisoned_outputs():
        m, l = backend.softmax_stats(x, block=block)
    ref_m, ref_l = stats_oracle(x)
    assert torch.equal(m.cpu().double(), ref_m)
    assert m[1] == float("-inf") and l[1] == 0 and l[2] == 1
    assert torch.allclose(l.cpu().double(), ref_l, rtol=4e-6, atol=0)


def test_softmax_stats_16bit(backend):
    """SMX-1 for bfloat16 rows: statistics in float32."""
    x = randn((3, 700), BF16, generator("stats16"))
    m, l = backend.softmax_stats(x)
    ref_m, ref_l = stats_oracle(x)
    assert m.dtype == torch.float32 and torch.equal(m.cpu().double(), ref_m)
    assert torch.allclose(l.cpu().double(), ref_l, rtol=4e-6, atol=0)


def test_softmax_merge(backend):
    """SMX-2, SMX-3: the merge law, its identity, and blocks merged into the one-shot statistics."""
    x = randn((4, 300), F32, generator("merge"))
    parts = [backend.softmax_stats(x[:, a:b]) for a, b in ((0, 100), (100, 230), (230, 300))]
    m, l = backend.softmax_merge(*parts[0], *backend.softmax_merge(*parts[1], *parts[2]))
    ref_m, ref_l = stats_oracle(x)
    assert torch.equal(m.cpu().double(), ref_m) and torch.allclose(l.cpu().double(), ref_l, rtol=4e-6, atol=0)
    ninf = torch.full((4,), float("-inf"), device=DEVICE)
    zero = torch.zeros(4, device=DEVICE)
    m0, l0 = backend.softmax_merge(ninf, zero, ninf, zero)
    assert torch.all(m0 == float("-inf")) and torch.all(l0 == 0)
    m1, l1 = backend.softmax_merge(*parts[0], ninf, zero)
    assert torch.equal(m1, parts[0][0]) and torch.equal(l1, parts[0][1])


# ------------------------------------------------------------------------------------------------
# KD loss


def kd_oracle(s, t, temperature, alpha, labels, ignore_index=-100):
    """float64 KD-1 loss and its autograd ds."""
    s64 = s.cpu().double().requires_grad_()
    t64 = t.cpu().double()
    kl = torch.nn.functional.kl_div(torch.log_softmax(s64 / temperature, -1), torch.log_softmax(t64 / temperature, -1),
                                    log_target=True, reduction="none").sum(-1) * temperature**2
    if labels is None:
        loss = kl.mean()
    else:
        lab = labels.cpu()
        keep = (lab != ignore_index).double()
        ce = torch.nn.functional.cross_entropy(s64, lab.clamp(min=0), reduction="none")
        loss = ((alpha * kl + (1 - alpha) * ce) * keep).sum() / keep.sum().clamp(min=1)
    loss.backward()
    return loss.detach(), s64.grad


#: ``kd_loss`` with the device's defaults, and with parts of 1024 columns in 256-column steps (on the GPU the
#: rows below then have several parts that wait on each other; the interpreter always runs one part per row)
KD_PATHS = {"defaults": {}, "parts-1024": {"chunk": 1024, "block": 256}}


@pytest.mark.parametrize("path", KD_PATHS)
@pytest.mark.parametrize("vocab", [1000, 3001])
@pytest.mark.parametrize("temperature,alpha,with_labels", [(2.0, 1.0, False), (1.5, 0.3, True), (1.0, 0.0, True)])
def test_kd_loss(vocab, temperature, alpha, with_labels, path):
    """KD-1, KD-2, KD-7: fused loss and ds against float64 for V not a multiple of the block."""
    rows = 64 if ON_CUDA else 6
    gen = generator("kd", vocab, temperature, alpha)
    s = randn((rows, vocab), F32, gen, 3.0)
    t = randn((rows, vocab), F32, gen, 3.0)
    labels = torch.randint(0, vocab, (rows,), generator=gen).to(DEVICE) if with_labels else None
    if labels is not None:
        labels[2] = -100
    alpha = alpha if with_labels else 1.0
    with poisoned_outputs():
        loss, ds = kd_loss(s, t, temperature=temperature, alpha=alpha, labels=labels, ignore_index=-100,
                           ds_shape=s.shape, **KD_PATHS[path])
    ref_loss, ref_ds = kd_oracle(s, t, temperature, alpha, labels)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and ds.shape == s.shape
    assert abs(float(loss) - float(ref_loss)) <= 2e-6 * max(1.0, abs(float(ref_loss)))
    assert float((ds.cpu().double() - ref_ds).abs().max()) <= 1e-7
    if labels is not None:
        assert torch.all(ds[2] == 0)
    if alpha == 1.0:
        assert float(ds.double().sum(-1).abs().max()) <= 1e-6  # KD-2: sums to 0 over V


def test_kd_loss_teacher_rows_starting_with_minus_inf(backend):
    """KD-1: teacher logits of -inf (a masked vocabulary) filling the first blocks of a row give finite,
    correct loss and ds: nothing computes -inf - -inf."""
    gen = generator("kd-inf")
    s = randn((4, 700), F32, gen, 2.0)
    t = randn((4, 700), F32, gen, 2.0)
    t[:, :600] = float("-inf")
    loss, ds = kd_loss(s, t, temperature=2.0, alpha=1.0, labels=None, ignore_index=-100, ds_shape=s.shape, block=256)
    s64 = s.cpu().double().requires_grad_()
    log_ps, log_pt = torch.log_softmax(s64 / 2.0, -1), torch.log_softmax(t.cpu().double() / 2.0, -1)
    terms = torch.where(log_pt > float("-inf"), log_pt.exp() * (log_pt - log_ps), 0.0)  # 0 log 0 = 0
    ref_loss = terms.sum(-1).mean() * 4.0
    (ref_ds,) = torch.autograd.grad(ref_loss, s64)
    assert torch.isfinite(loss) and bool(torch.isfinite(ds).all())
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    assert float((ds.cpu().double() - ref_ds).abs().max()) <= 1e-7


def test_kd_loss_shifts_and_3d(backend):
    """KD-3, KD-4: s = t + c gives loss 0 and ds 0; [B, L, V] logits are flattened to rows."""
    gen = generator("kd3")
    t = randn((2, 3, 517), F32, gen)
    s = t + randn((2, 3, 1), F32, gen) * 5
    loss, ds = backend.kd_loss(s, t, temperature=3.0)
    assert ds.shape == s.shape and 0.0 <= float(loss) <= 1e-6 and float(ds.abs().max()) <= 1e-7


# ------------------------------------------------------------------------------------------------
# reduction


@pytest.mark.parametrize("n", [1, 2, 3, 64, 1000, 1025, 4097, 70001])
def test_reduce_sum_follows_schedule(backend, n):
    """WD-1, WD-2: bit-identical to the declared schedule evaluated in float32; W = n - 1, and the schedule's
    depth is the pairwise tree's up to one program's lanes, the lanes' rows plus the tree's levels beyond."""
    x = randn((n,), F32, generator("reduce", n))
    with poisoned_outputs():
        value, schedule = backend.reduce_sum(x)
    assert value.dim() == 0 and value.dtype == torch.float32
    expected = schedule.evaluate(x.cpu().numpy())
    assert np.float32(value.item()).tobytes() == np.float32(expected).tobytes()
    assert schedule.work == n - 1 and schedule.kind == SCHEDULE_KIND
    rows, lanes, _ = GPU_REDUCE if ON_CUDA else INTERPRETER_REDUCE
    if n <= lanes:
        assert schedule.depth == math.ceil(math.log2(n))
    elif n <= rows * lanes:
        assert schedule.depth == -(-n // lanes) - 1 + int(math.log2(lanes))
    schedule.validate()


@pytest.mark.parametrize("n", [1, 2, 5, 64, 100, 256])
def test_strided_schedule_within_lanes_is_the_pairwise_tree(n):
    """Up to one row of lanes the strided schedule is exactly ``schedule.pairwise_tree``, round for round."""
    ours, theirs = strided_schedule(n, 4, 256), pairwise_tree(n)
    assert len(ours.rounds) == len(theirs.rounds) and ours.result == theirs.result
    for a, b in zip(ours.rounds, theirs.rounds):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("rows,lanes", [(1, 2), (3, 4), (2, 8)])
def test_strided_sum_configs(rows, lanes):
    """Other shapes of program (several launches for n = 1000) follow their own schedules bit-exactly."""
    x = randn((1000,), F32, generator("reduce-config", rows, lanes))
    got = np.float32(strided_sum(x, rows, lanes).item())
    assert got.tobytes() == np.float32(strided_schedule(1000, rows, lanes).evaluate(x.cpu().numpy())).tobytes()


# ------------------------------------------------------------------------------------------------
# factory


def test_factory_declares_its_device(backend):
    assert backend.name == "triton"
    if ON_CUDA:
        assert backend.capabilities.devices == ("cuda",) and backend.capabilities.max_seq_len is None
    else:
        assert backend.capabilities.devices == ("cpu",) and backend.capabilities.max_seq_len == 256


def test_factory_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="no CUDA device and TRITON_INTERPRET is not set"):
        backends()
