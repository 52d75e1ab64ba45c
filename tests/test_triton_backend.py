"""Tests of the Triton backend (``implementations/triton``): its factory, and attention forward and
backward against float64 oracles, on the interpreter or on CUDA (``tests/triton_setup.py``). Tolerances
follow SPEC.md's rule: ``err(backend) <= mult * err(naive_t) + floor``, with ``naive_t`` the materialising
implementation in the inputs' dtype with a float32 softmax.
"""

from __future__ import annotations

import math

from tests.triton_setup import BF16, DEVICE, F16, F32, ON_CUDA, generator, randn  # isort: skip  (sets up Triton)
import pytest
import torch

from implementations.base import BackendUnavailable, InvalidInputError, poisoned_outputs
from implementations.triton import backends
from implementations.triton.autograd import triton_attention


@pytest.fixture(scope="module")
def backend():
    return backends()


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
