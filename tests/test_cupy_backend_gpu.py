"""The CuPy backend against torch float64 oracles, on a few shapes per operation (GPU only).

Skipped unless CUDA and CuPy both run here. Tolerances follow SPEC's rule in a simplified form:
``err(backend) <= mult * err(naive_t) + floor``, where ``naive_t`` materialises the operation in the input
dtype with a float32 softmax, and ``floor`` is a few units of the dtype's rounding at the oracle's scale.
Outputs are poisoned (NaN-filled) before each call, so an element a kernel never writes fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from implementations.base import BackendUnavailable, poisoned_outputs

try:
    from implementations.cupy import backends
    from implementations.cupy.backend import KD_PART, kd_split

    BACKEND = backends()
    SKIP = ""
except (BackendUnavailable, ImportError) as exc:
    BACKEND = None
    SKIP = str(exc)

pytestmark = pytest.mark.skipif(BACKEND is None, reason=f"cupy backend unavailable: {SKIP}")
DEV = "cuda"


def _floor(dtype: torch.dtype, oracle: torch.Tensor) -> float:
    scale = float(oracle[torch.isfinite(oracle)].abs().max()) if oracle.numel() else 0.0
    return 4 * torch.finfo(dtype).eps * max(scale, 1e-3)


def _check(name: str, got: torch.Tensor, oracle: torch.Tensor, naive: torch.Tensor, mult: float,
           dtype: torch.dtype) -> None:
    got64, naive64, oracle = got.double().cpu(), naive.double().cpu(), oracle.double().cpu()
    assert torch.isfinite(got64).eq(torch.isfinite(oracle)).all(), f"{name}: NaN/Inf pattern differs from oracle"
    fin = torch.isfinite(oracle)
    assert torch.equal(got64[~fin], oracle[~fin]), f"{name}: non-finite values differ"
    err = float((got64[fin] - oracle[fin]).abs().max()) if fin.any() else 0.0
    err_naive = float((naive64[fin] - oracle[fin]).abs().max()) if fin.any() else 0.0
    bound = mult * err_naive + _floor(dtype, oracle)
    assert err <= bound, f"{name}: err {err:.3e} > {mult} x naive {err_naive:.3e} + floor ({bound:.3e})"


def _mask(Sq: int, Sk: int, causal: str | None, device: str) -> torch.Tensor | None:
    if causal is None:
        return None
    off = 0 if causal == "top_left" else Sk - Sq
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    return j <= i + off


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: str | None, scale: float,
               softmax_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialising attention: scores in q's dtype, softmax in ``softmax_dtype``, P V in q's dtype."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = (q @ k.transpose(-1, -2)).to(softmax_dtype) * scale
    mask = _mask(q.shape[2], k.shape[2], causal, q.device.type)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    # Shifting by a constant (the detached row max) leaves softmax and its gradient unchanged, and keeps
    # rows with no visible key free of NaN in both directions: p = 0, lse = -inf.
    m = s.amax(-1, keepdim=True).detach()
    e = torch.exp(s - torch.where(torch.isfinite(m), m, 0))
    l = e.sum(-1, keepdim=True)
    p = e / torch.where(l > 0, l, 1)
    lse = (torch.where(torch.isfinite(m), m, 0) + torch.log(l)).squeeze(-1)
    return (p.to(q.dtype) @ v), lse


ATT_CASES = [  # B, Hq, Hk, Sq, Sk, D, dtype, causal, scale
    (2, 4, 2, 113, 203, 64, torch.bfloat16, None, None),
    (1, 2, 2, 128, 217, 59, torch.bfloat16, "bottom_right", None),
    (1, 3, 1, 239, 1, 40, torch.bfloat16, "top_left", None),
    (2, 2, 2, 512, 256, 128, torch.bfloat16, "bottom_right", None),
    (1, 2, 2, 127, 513, 128, torch.float16, "top_left", -0.3),
    (1, 2, 1, 300, 300, 256, torch.bfloat16, None, None),
    (1, 1, 1, 1, 1, 16, torch.bfloat16, None, 2.0),
    (1, 2, 2, 1023, 1024, 96, torch.bfloat16, "top_left", None),
]


def _att_inputs(case: tuple, seed: int) -> tuple[torch.Tensor, ...]:
    B, Hq, Hk, Sq, Sk, D, dtype, _, _ = case
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(B, Hq, Sq, D, device=DEV, generator=g).to(dtype)
    k = torch.randn(B, Hk, Sk, D, device=DEV, generator=g).to(dtype)
    v = torch.randn(B, Hk, Sk, D, device=DEV, generator=g).to(dtype)
    dout = torch.randn(B, Hq, Sq, D, device=DEV, generator=g).to(dtype)
    return q, k, v, dout


@pytest.mark.parametrize("case", ATT_CASES, ids=lambda c: f"B{c[0]}H{c[1]}k{c[2]}-{c[3]}x{c[4]}-D{c[5]}-"
                         f"{str(c[6])[6:]}-{c[7]}")
def test_attention_forward_and_backward(case: tuple) -> None:
    B, Hq, Hk, Sq, Sk, D, dtype, causal, scale = case
    scale = scale if scale is not None else 1 / math.sqrt(D)
    q, k, v, dout = _att_inputs(case, seed=Sq * 7 + D)
    with poisoned_outputs():
        out, lse = BACKEND.attention(q, k, v, causal=causal, scale=scale)
    q64, k64, v64 = (x.double().cpu().requires_grad_() for x in (q, k, v))
    o64, lse64 = _attention(q64, k64, v64, causal, scale, torch.float64)
    qn, kn, vn = (x.detach().clone().requires_grad_() for x in (q, k, v))
    on, lsen = _attention(qn, kn, vn, causal, scale, torch.float32)
    _check("out", out, o64, on, 2, dtype)
    _check("lse", lse, lse64, lsen, 2, torch.float32)
    assert lse.dtype == torch.float32 and out.dtype == dtype

    with poisoned_outputs():
        dq, dk, dv = BACKEND.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale)
        delta = BACKEND.attention_delta(out, dout)
    g64 = torch.autograd.grad(o64, (q64, k64, v64), dout.double().cpu())
    gn = torch.autograd.grad(on, (qn, kn, vn), dout)
    for name, got, ref, naive in zip(("dq", "dk", "dv"), (dq, dk, dv), g64, gn):
        _check(name, got, ref, naive, 3, dtype)
    delta64 = (dout.double() * out.double()).sum(-1)
    assert torch.allclose(delta.double(), delta64, rtol=1e-4, atol=1e-4)
    again = BACKEND.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=scale)
    assert all(torch.equal(a, b) for a, b in zip((dq, dk, dv), again)), "backward is not deterministic"


def test_fully_masked_rows() -> None:
    q, k, v, dout = _att_inputs((1, 2, 2, 70, 20, 64, torch.bfloat16, None, None), seed=3)
    with poisoned_outputs():
        out, lse = BACKEND.attention(q, k, v, causal="bottom_right")
        dq, dk, dv = BACKEND.attention_backward(q, k, v, out, lse, dout, causal="bottom_right")
    assert torch.equal(out[:, :, :50], torch.zeros_like(out[:, :, :50]))
    assert torch.isneginf(lse[:, :, :50]).all() and torch.isfinite(lse[:, :, 50:]).all()
    assert torch.equal(dq[:, :, :50], torch.zeros_like(dq[:, :, :50]))
    assert all(torch.isfinite(x).all() for x in (out, dq, dk, dv))


def test_strided_inputs_are_read_in_place() -> None:
    base = torch.randn(2, 96, 3, 64, device=DEV).to(torch.bfloat16)  # [B, S, H, D] viewed as [B, H, S, D]
    q = base.transpose(1, 2)
    out, lse = BACKEND.attention(q, q, q, causal="top_left")
    ref, ref_lse = BACKEND.attention(q.contiguous(), q.contiguous(), q.contiguous(), causal="top_left")
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


# -- softmax statistics -----------------------------------------------------------------------------

def _stats_rows(dtype: torch.dtype, L: int) -> torch.Tensor:
    x = torch.randn(6, L, device=DEV) * 5
    x[1] = -math.inf
    x[2] = -math.inf
    x[2, L // 3] = 1.5
    x[3] = torch.where(torch.rand(L, device=DEV) < 0.5, -1e4, 1e4)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("L, block", [(1, None), (1000, None), (4099, None), (131072, None), (4099, 37), (500, 1)])
def test_softmax_stats(dtype: torch.dtype, L: int, block: int | None) -> None:
    x = _stats_rows(dtype, L)
    with poisoned_outputs():
        m, l = BACKEND.softmax_stats(x, block=block)
    x64 = x.double()
    m64 = x64.max(1).values
    l64 = torch.exp(x64 - torch.where(torch.isfinite(m64), m64, 0)[:, None]).sum(1)
    assert torch.equal(m.double(), m64), "m must be the exact row max"
    assert torch.allclose(l.double(), l64, rtol=2e-6 * math.log2(max(L, 2)) + 1e-6, atol=0)


def test_softmax_merge() -> None:
    m1, m2 = torch.randn(1000, device=DEV) * 10, torch.randn(1000, device=DEV) * 10
    l1, l2 = torch.rand(1000, device=DEV) + 0.5, torch.rand(1000, device=DEV) + 0.5
    m1[:10], l1[:10] = -math.inf, 0.0
    m2[5:15], l2[5:15] = -math.inf, 0.0
    with poisoned_outputs():
        m, l = BACKEND.softmax_merge(m1, l1, m2, l2)
    M = torch.maximum(m1, m2).double()
    safe = torch.where(torch.isfinite(M), M, 0)
    L64 = l1.double() * torch.exp(m1.double() - safe) + l2.double() * torch.exp(m2.double() - safe)
    assert torch.equal(m.double(), M)
    assert torch.allclose(l.double(), L64, rtol=1e-6, atol=0)
    assert torch.equal(l[5:10], torch.zeros(5, device=DEV)) and not torch.isnan(l).any()


# -- KD loss ----------------------------------------------------------------------------------------

def _kd_reference(s: torch.Tensor, t: torch.Tensor, T: float, alpha: float, labels: torch.Tensor | None,
                  ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = s.double().cpu().requires_grad_()
    t = t.double().cpu()
    kl = (torch.softmax(t / T, -1) * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1)
    row = alpha * T * T * kl
    keep = torch.ones(s.shape[0], dtype=torch.bool)
    if labels is not None:
        lab = labels.cpu()
        keep = lab != ignore_index
        ce = torch.logsumexp(s, -1) - s.gather(1, lab.clamp(min=0)[:, None])[:, 0]
        row = row + (1 - alpha) * ce
    loss = (row * keep).sum() / keep.sum().clamp(min=1)
    (ds,) = torch.autograd.grad(loss, s)
    return loss.detach(), ds


def _kd_backend(part: int | None = None, threads: int | None = None):
    """A backend whose ``kd_part`` uses parts of ``part`` columns and CTAs of ``threads`` (None: defaults)."""
    be = type(BACKEND)()
    be.kd_part_cols, be.kd_threads = part, threads
    return be


def _kd_parts(V: int, N: int, part: int | None = None) -> tuple[int, int]:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return kd_split(V, N, sms, part or KD_PART)


def _kd_check(be, N: int, V: int, dtype: torch.dtype, labelled: bool, seed: int = 0) -> None:
    g = torch.Generator(device=DEV).manual_seed(seed)
    s = (torch.randn(N, V, device=DEV, generator=g) * 3).to(dtype)
    t = (torch.randn(N, V, device=DEV, generator=g) * 3).to(dtype)
    labels, alpha = None, 1.0
    if labelled:
        labels = torch.randint(0, V, (N,), device=DEV, generator=g)
        labels[::5] = -100
        alpha = 0.7
    with poisoned_outputs():
        loss, ds = be.kd_loss(s, t, temperature=2.0, alpha=alpha, labels=labels)
    ref_loss, ref_ds = _kd_reference(s, t, 2.0, alpha, labels, -100)
    assert loss.shape == () and ds.shape == s.shape and ds.dtype == dtype
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss))) * max(1.0, math.log2(V))
    tol = (1e-5 if dtype == torch.float32 else 8e-3) * float(ref_ds.abs().max())
    assert float((ds.double().cpu() - ref_ds).abs().max()) <= tol
    if labelled:
        assert torch.equal(ds[::5], torch.zeros_like(ds[::5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [1, 7, 37, 1000, 1001, 4097, 32768, 50000, 131072, 200000])
@pytest.mark.parametrize("labelled", [False, True])
def test_kd_loss(dtype: torch.dtype, V: int, labelled: bool) -> None:
    """Default parts (8192 columns): one part up to V = 8192, 4 at 32768, 16 at 131072, 25 at 200000."""
    _kd_check(BACKEND, 37 if V <= 4097 else 6, V, dtype, labelled, seed=V)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("part, threads, V, parts", [
    (1024, 128, 4097, 5),   # scalar loads, a last part of one column
    (1024, 256, 4096, 4),   # 16-byte loads, 256 threads
    (1024, 128, 5000, 5),   # 16-byte loads (float32, 8 | 5000), last part shorter than a step
    (64, 128, 1000, 16),    # parts shorter than the CTA's step of packs
    (64, 32, 37, 1),        # one warp, one part shorter than the CTA
])
@pytest.mark.parametrize("labelled", [False, True])
def test_kd_loss_several_parts_per_row(dtype: torch.dtype, part: int, threads: int, V: int, parts: int,
                                       labelled: bool) -> None:
    assert _kd_parts(V, 37, part)[0] == parts
    _kd_check(_kd_backend(part, threads), 37, V, dtype, labelled, seed=part + V)


@pytest.mark.parametrize("V", [4096, 4000])  # 16 parts of 256 columns (4000: the last one of 160)
def test_kd_loss_many_rows_of_many_parts(V: int) -> None:
    """4096 rows x 16 parts: 65536 CTAs meeting by row through the ticket order."""
    assert _kd_parts(V, 4096, 256)[0] == 16
    _kd_check(_kd_backend(256), 4096, V, torch.float32, labelled=True, seed=V)


def test_kd_loss_part_widened_to_the_sm_count() -> None:
    """Parts of 64 columns would give a row of 200000 columns 3125 parts; they are widened so that a row has at
    most as many parts as the GPU has SMs (all of a row's parts must be able to be resident at once)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    parts, cols = _kd_parts(200000, 5, 64)
    assert parts <= sms and cols > 64 and cols % 64 == 0 and parts * cols >= 200000
    _kd_check(_kd_backend(64), 5, 200000, torch.float32, labelled=True)


@pytest.mark.parametrize("V, part", [(4097, None), (131072, None), (4097, 1024), (50000, 256)])
def test_kd_loss_repeats_bit_identically(V: int, part: int | None) -> None:
    """No float atomics: loss and ds are bit-identical on repeat, whatever order the parts meet in."""
    be = _kd_backend(part)
    s, t = torch.randn(9, V, device=DEV) * 3, torch.randn(9, V, device=DEV) * 3
    labels = torch.randint(0, V, (9,), device=DEV)
    labels[3] = -100
    loss1, ds1 = be.kd_loss(s, t, temperature=1.5, alpha=0.6, labels=labels)
    loss2, ds2 = be.kd_loss(s, t, temperature=1.5, alpha=0.6, labels=labels)
    assert torch.equal(loss1, loss2) and torch.equal(ds1, ds2)


@pytest.mark.parametrize("V", [5000, 5001])  # 16-byte and scalar loads
@pytest.mark.parametrize("part", [None, 1024])  # one part; 5 parts, of which part 4 (and row 1's part 0) all -inf
def test_kd_loss_masked_teacher_logits(V: int, part: int | None) -> None:
    """Teacher logits of -inf (a masked or padded vocabulary) have p_t = 0 and add nothing to the KL; rows
    starting with -inf teacher logits (running max still -inf) and parts holding only -inf teacher logits
    must not give NaN."""
    T = 2.0
    s, t = torch.randn(5, V, device=DEV) * 3, torch.randn(5, V, device=DEV) * 3
    t[:, 4000:] = -math.inf
    t[1, :1500] = -math.inf
    with poisoned_outputs():
        loss, ds = _kd_backend(part).kd_loss(s, t, temperature=T)
    s64 = s.double().cpu().requires_grad_()
    pt = torch.softmax(t.double().cpu() / T, -1)
    kl = (torch.xlogy(pt, pt) - pt * torch.log_softmax(s64 / T, -1)).sum(-1)
    ref_loss = (T * T * kl).mean()
    (ref_ds,) = torch.autograd.grad(ref_loss, s64)
    assert abs(float(loss) - float(ref_loss)) <= 1e-4 * max(1.0, float(ref_loss))
    assert float((ds.double().cpu() - ref_ds).abs().max()) <= 1e-5 * float(ref_ds.abs().max())


def test_kd_loss_zero_for_shifted_logits() -> None:
    s = torch.randn(8, 5000, device=DEV)
    loss, ds = BACKEND.kd_loss(s, s + 3.0, temperature=4.0)
    assert 0.0 <= float(loss) < 1e-5 and float(ds.abs().max()) < 1e-6


def test_kd_loss_no_counted_row() -> None:
    s, t = torch.randn(4, 300, device=DEV), torch.randn(4, 300, device=DEV)
    with poisoned_outputs():
        loss, ds = BACKEND.kd_loss(s, t, temperature=1.0, alpha=0.5, labels=torch.full((4,), -100, device=DEV))
    assert float(loss) == 0.0 and torch.equal(ds, torch.zeros_like(ds))


# -- reduction --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 33, 1000, 262_145, 1_000_003])
def test_reduce_sum_follows_its_schedule(n: int) -> None:
    x = torch.randn(n, device=DEV)
    with poisoned_outputs():
        value, sched = BACKEND.reduce_sum(x)
    assert sched.work == n - 1
    expected = sched.evaluate(x.cpu().numpy())
    assert np.float32(value.item()).view(np.uint32) == np.float32(expected).view(np.uint32)
    assert abs(value.item() - float(x.double().sum())) <= 1e-4 * math.sqrt(n)
