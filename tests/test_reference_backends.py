"""Self-tests of the NumPy backends ``reference`` and ``reference-tiled`` against torch float64 autograd.

The oracle here is written independently of both backends (torch, float64, autograd for gradients), on
seeded random inputs: attention forward / backward (odd shapes, D=59, GQA, both causal variants with fully
masked rows), delta, softmax statistics and merge, the KD loss against ``F.kl_div`` and its autograd
gradient, the reductions' bit-identity to their declared schedules, and reference-tiled's memory.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from implementations.base import InvalidInputError, poisoned_outputs
from implementations.reference import ReferenceBackend
from implementations.reference_tiled import TILES, TiledReferenceBackend

REF = ReferenceBackend()
TILED = TiledReferenceBackend()
BACKENDS = [pytest.param(REF, id="reference"), pytest.param(TILED, id="reference-tiled")]
F64 = torch.float64


def _randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def _qkv(B: int, Hq: int, Hk: int, Sq: int, Sk: int, D: int, seed: int,
         dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    """q, k, v and dout."""
    return (_randn(B, Hq, Sq, D, seed=seed, dtype=dtype), _randn(B, Hk, Sk, D, seed=seed + 1, dtype=dtype),
            _randn(B, Hk, Sk, D, seed=seed + 2, dtype=dtype), _randn(B, Hq, Sq, D, seed=seed + 3, dtype=dtype))


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, causal: str | None,
           scale: float | None = None) -> tuple[torch.Tensor, ...]:
    """out, lse, dq, dk, dv in float64 by torch autograd; fully masked rows: out 0, lse -inf, grads 0."""
    q, k, v = (x.detach().to(F64).requires_grad_() for x in (q, k, v))
    Sq, Sk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1 / math.sqrt(D) if scale is None else scale
    group = q.shape[1] // k.shape[1]
    s = scale * q @ k.repeat_interleave(group, 1).transpose(-1, -2)
    seen = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal is not None:
        offset = 0 if causal == "top_left" else Sk - Sq
        seen = torch.arange(Sk)[None, :] <= torch.arange(Sq)[:, None] + offset
    s = torch.where(seen, s, -1e300)  # finite stand-in for -inf keeps autograd free of NaN
    any_seen = seen.any(-1)[:, None]
    out = torch.where(any_seen, torch.softmax(s, -1) @ v.repeat_interleave(group, 1), 0.0)
    lse = torch.where(any_seen[:, 0], torch.logsumexp(s, -1), -math.inf)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout.to(F64))
    return out.detach(), lse.detach(), dq, dk, dv


def _assert_close(got: torch.Tensor, want: torch.Tensor, atol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got64 = got.to(F64)
    assert torch.equal(torch.isneginf(got64), torch.isneginf(want)), f"{what}: -inf pattern differs"
    assert not torch.isnan(got64).any(), f"{what}: NaN"
    finite = torch.isfinite(want)
    err = (got64[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    assert err <= atol, f"{what}: max error {err:.3g} > {atol:.3g}"


SHAPES = [  # B, Hq, Hk, Sq, Sk, D, causal
    (1, 2, 2, 1, 239, 16, None),
    (1, 2, 2, 1, 239, 16, "bottom_right"),
    (2, 4, 2, 113, 203, 59, None),
    (1, 4, 2, 113, 203, 59, "top_left"),
    (2, 2, 1, 239, 1, 32, "top_left"),
    (1, 2, 2, 239, 1, 32, "bottom_right"),  # only the last query row sees a key
    (1, 4, 2, 239, 113, 59, "bottom_right"),  # Sq > Sk: 126 fully masked rows
    (1, 2, 2, 130, 70, 8, "top_left"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}k{}-{}x{}-D{}-{}".format(*s))
def test_attention_float64_matches_autograd(backend, shape) -> None:  # noqa: ANN001
    """ATT-1..4, 6 and GRAD-1, 4, 5 in float64: out, lse, dq, dk, dv equal the autograd oracle."""
    *dims, causal = shape
    q, k, v, dout = _qkv(*dims, seed=sum(dims))
    want = oracle(q, k, v, dout, causal)
    with poisoned_outputs():
        out, lse = backend.attention(q, k, v, causal=causal)
        grads = backend.attention_backward(q, k, v, out, lse, dout, causal=causal)
    assert out.dtype == F64 and lse.dtype == F64
    for name, got, ref in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), want):
        _assert_close(got, ref, 1e-10, name)
    empty = torch.isneginf(want[1])
    assert torch.all(out[empty] == 0) and torch.all(grads[0][empty] == 0)  # ATT-4, GRAD-5


@pytest.mark.parametrize("tiles", TILES, ids=lambda t: f"{t[0]}x{t[1]}")
def test_every_tile_choice(tiles: tuple[int, int]) -> None:
    """ATT-7: reference-tiled passes with every declared tile size (float32, GQA, bottom-right, ragged edges)."""
    q, k, v, dout = _qkv(1, 4, 2, 203, 113, 59, seed=7, dtype=torch.float32)
    want = oracle(q, k, v, dout, "bottom_right")
    out, lse = TILED.attention(q, k, v, causal="bottom_right", tiles=tiles)
    grads = TILED.attention_backward(q, k, v, out, lse, dout, causal="bottom_right", tiles=tiles)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    for name, got, ref, tol in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), want,
                                   (1e-5, 1e-5, 1e-4, 1e-4, 1e-4)):
        _assert_close(got, ref, tol, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)],
                         ids=["float32", "float16", "bfloat16"])
def test_low_precision_dtypes(backend, dtype: torch.dtype, tol: float) -> None:  # noqa: ANN001
    """Outputs come back in the input dtype (lse float32) and are within that dtype's rounding of the oracle."""
    q, k, v, dout = _qkv(1, 2, 1, 113, 203, 59, seed=11, dtype=dtype)
    want = oracle(q, k, v, dout, "top_left")
    out, lse = backend.attention(q, k, v, causal=True)
    dq, dk, dv = backend.attention_backward(q, k, v, out, lse, dout, causal=True)
    assert out.dtype == dq.dtype == dk.dtype == dv.dtype == dtype and lse.dtype == torch.float32
    _assert_close(out, want[0], tol, "out")
    _assert_close(lse, want[1], 2e-5 * 10, "lse")
    for name, got, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), want[2:]):
        _assert_close(got, ref, 8 * tol, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [-0.7, 3.0, 1e-3])
def test_custom_scale(backend, scale: float) -> None:  # noqa: ANN001
    """ATT-8: a custom (also negative) scale is honoured, forward and backward."""
    q, k, v, dout = _qkv(1, 2, 2, 37, 51, 16, seed=3)
    want = oracle(q, k, v, dout, "top_left", scale)
    out, lse = backend.attention(q, k, v, causal="top_left", scale=scale)
    grads = backend.attention_backward(q, k, v, out, lse, dout, causal="top_left", scale=scale)
    for name, got, ref in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), want):
        _assert_close(got, ref, 1e-9, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits(backend) -> None:  # noqa: ANN001
    """ATT-9: logits up to 1e4 in float32 neither overflow nor lose the row max."""
    q, k, v, dout = _qkv(1, 2, 2, 64, 96, 32, seed=5, dtype=torch.float32)
    scale = 1e4 / (q.double() @ k.double().transpose(-1, -2)).abs().max().item()
    want = oracle(q, k, v, dout, None, scale)
    out, lse = backend.attention(q, k, v, scale=scale)
    _assert_close(out, want[0], 1e-2, "out")
    _assert_close(lse, want[1], 16 * 1e4 * torch.finfo(torch.float32).eps, "lse")  # a few float32 ulps of 1e4


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta(backend) -> None:  # noqa: ANN001
    """GRAD-3: attention_delta = rowsum(dout ∘ out)."""
    q, k, v, dout = _qkv(2, 4, 2, 45, 70, 24, seed=9)
    out, _ = backend.attention(q, k, v)
    _assert_close(backend.attention_delta(out, dout), (dout * out).sum(-1), 1e-12, "delta")


def test_deterministic_backward() -> None:
    """GRAD-6: reference-tiled's gradients are bit-identical over repeats."""
    q, k, v, dout = _qkv(1, 4, 2, 100, 150, 32, seed=13, dtype=torch.float32)
    out, lse = TILED.attention(q, k, v, causal=True)
    first = TILED.attention_backward(q, k, v, out, lse, dout, causal=True)
    for _ in range(3):
        again = TILED.attention_backward(q, k, v, out, lse, dout, causal=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def _stats_rows() -> torch.Tensor:
    x = _randn(6, 300, seed=21) * 5
    x[1] = -math.inf  # SMX-5: a row of -inf
    x[2] = -math.inf
    x[2, 123] = 4.0  # a single finite entry
    x[3] = torch.where(torch.arange(300) % 2 == 0, 1e4, -1e4)
    x[4, :150] = -math.inf  # the first blocks see nothing
    return x


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16])
@pytest.mark.parametrize("block", [None, 1, 7, 128, 1000])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_stats(backend, block: int | None, dtype: torch.dtype) -> None:  # noqa: ANN001
    """SMX-1, 5: m exactly the row max, l = Σ exp(x - m), whatever the block; -inf rows give (-inf, 0)."""
    x = _stats_rows().to(dtype)
    m, l = backend.softmax_stats(x, block=block)
    assert m.dtype == l.dtype == (F64 if dtype == F64 else torch.float32)
    x64 = x.to(F64)
    want_m = x64.max(1).values
    assert torch.equal(m.to(F64), want_m)
    want_l = torch.exp(x64 - torch.where(torch.isneginf(want_m), 0.0, want_m)[:, None]).sum(1)
    tol = 1e-12 if dtype == F64 else 1e-4
    assert torch.allclose(l.to(F64), want_l, rtol=tol, atol=0), (l, want_l)
    assert want_l[1] == 0 and l[1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_merge(backend) -> None:  # noqa: ANN001
    """SMX-2, 3: the merge formula, its identity, (-inf,0)⊕(-inf,0), and split rows merging to the one-shot l."""
    m1, m2 = _randn(50, seed=1) * 3, _randn(50, seed=2) * 3
    l1, l2 = _randn(50, seed=3).abs() + 0.1, _randn(50, seed=4).abs() + 0.1
    m, l = backend.softmax_merge(m1, l1, m2, l2)
    mx = torch.maximum(m1, m2)
    assert torch.equal(m, mx)
    assert torch.allclose(l, l1 * torch.exp(m1 - mx) + l2 * torch.exp(m2 - mx), rtol=1e-14)
    ninf, zero = torch.full((50,), -math.inf, dtype=F64), torch.zeros(50, dtype=F64)
    mi, li = backend.softmax_merge(m1, l1, ninf, zero)
    assert torch.equal(mi, m1) and torch.equal(li, l1)
    me, le = backend.softmax_merge(ninf, zero, ninf, zero)
    assert torch.all(torch.isneginf(me)) and torch.all(le == 0)
    x = _randn(4, 500, seed=5, dtype=torch.float32)
    parts = [backend.softmax_stats(x[:, a:b]) for a, b in ((0, 13), (13, 300), (300, 500))]
    merged = backend.softmax_merge(*parts[0], *backend.softmax_merge(*parts[1], *parts[2]))
    one_shot = backend.softmax_stats(x)
    assert torch.equal(merged[0], one_shot[0]) and torch.allclose(merged[1], one_shot[1], rtol=1e-6)
    with pytest.raises(InvalidInputError, match="shape"):
        backend.softmax_merge(m1, l1[:3], m2, l2)


def _kd_oracle(s: torch.Tensor, t: torch.Tensor, T: float, alpha: float, labels: torch.Tensor | None,
               ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """KD-1/2 by torch: batchmean KL · T² (no labels), or the per-row mix over counted rows; grad by autograd."""
    V = s.shape[-1]
    s64 = s.detach().to(F64).reshape(-1, V).requires_grad_()
    t64 = t.to(F64).reshape(-1, V)
    log_ps, log_pt = F.log_softmax(s64 / T, -1), F.log_softmax(t64 / T, -1)
    if labels is None:
        loss = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * T * T
    else:
        y = labels.reshape(-1)
        kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
        ce = F.cross_entropy(s64, y, reduction="none", ignore_index=ignore_index)
        counted = y != ignore_index
        loss = (alpha * T * T * kl + (1 - alpha) * ce)[counted].sum() / max(int(counted.sum()), 1)
    (grad,) = torch.autograd.grad(loss, s64)
    return loss.detach(), grad.reshape(s.shape)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("with_labels", [False, True], ids=["no-labels", "labels"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kd_loss(backend, with_labels: bool, dtype: torch.dtype) -> None:  # noqa: ANN001
    """KD-1, 2, 7: loss and ds equal torch's kl_div(batchmean)·T² (+ CE with labels) and autograd; V = 1000
    is no multiple of the chunk (reference-tiled runs with 128-column chunks); [B, L, V] inputs are rows."""
    s, t = _randn(2, 5, 1000, seed=31, dtype=dtype) * 3, _randn(2, 5, 1000, seed=32, dtype=dtype) * 3
    T, alpha = 2.5, (0.3 if with_labels else 1.0)
    labels = None
    if with_labels:
        labels = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(33))
        labels[0, 1] = labels[1, 4] = -100
    want_loss, want_ds = _kd_oracle(s, t, T, alpha, labels)
    chunked = TiledReferenceBackend()
    chunked.kd_chunk = 128
    b = chunked if backend is TILED else backend
    with poisoned_outputs():
        loss, ds = b.kd_loss(s, t, temperature=T, alpha=alpha, labels=labels)
    assert loss.dtype == dtype and loss.dim() == 0 and ds.dtype == dtype and ds.shape == s.shape
    tol = 1e-12 if dtype == F64 else 1e-5
    assert abs(loss.item() - want_loss.item()) <= 1e-6 * max(1.0, want_loss.item())
    _assert_close(ds, want_ds, tol, "ds")
    if with_labels:
        assert torch.all(ds[0, 1] == 0) and torch.all(ds[1, 4] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kd_all_rows_ignored(backend) -> None:  # noqa: ANN001
    """No counted row: loss 0 and ds 0 (contract)."""
    s, t = _randn(3, 50, seed=41), _randn(3, 50, seed=42)
    loss, ds = backend.kd_loss(s, t, temperature=1.0, alpha=0.5, labels=torch.full((3,), -100))
    assert loss.item() == 0 and torch.all(ds == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 2, 3, 64, 1000, 4097])
def test_reduce_sum_follows_its_schedule(backend, n: int) -> None:  # noqa: ANN001
    """WD-2: the float32 result is bit-identical to the declared schedule evaluated in float32."""
    x = _randn(n, seed=n, dtype=torch.float32) * 1000
    value, sched = backend.reduce_sum(x)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert sched.kind == backend.capabilities.reduce_schedule and sched.n == n
    assert value.numpy().tobytes() == np.float32(sched.evaluate(x.numpy())).tobytes()


def _traced_peak(fn) -> int:  # noqa: ANN001
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_tiled_memory_is_linear() -> None:
    """ATT-10: reference-tiled's forward / backward NumPy peak at S=1024 is far below the float32 score matrix
    (4·S² bytes per head), and doubling S about doubles the forward's peak."""
    peaks = {}
    for S in (512, 1024):
        q, k, v, dout = _qkv(1, 1, 1, S, S, 64, seed=S, dtype=torch.float32)
        peaks[S] = _traced_peak(lambda q=q, k=k, v=v: TILED.attention(q, k, v))
    S = 1024
    assert peaks[S] < 0.1 * 4 * S * S, peaks
    assert peaks[1024] < 2.5 * peaks[512], peaks
    out, lse = TILED.attention(q, k, v)
    backward_peak = _traced_peak(lambda: TILED.attention_backward(q, k, v, out, lse, dout))
    # the dq accumulator [S, D] float32 is the one S-sized buffer
    assert backward_peak < 4 * S * 64 + 0.1 * 4 * S * S, backward_peak


def test_tiled_kd_holds_no_rows_by_vocab_buffer() -> None:
    """KD-7: chunked kd_loss allocates less than half an [N, V] float32 array in NumPy (the harness's budget
    beyond the gradient), for a vocabulary just above the chunk and for a large one."""
    for N, V in ((8, 4097), (4, 131072)):
        s, t = _randn(N, V, seed=51, dtype=torch.float32), _randn(N, V, seed=52, dtype=torch.float32)
        labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(53))
        peak = _traced_peak(lambda s=s, t=t, labels=labels: TILED.kd_loss(s, t, temperature=2.0, alpha=0.5,
                                                                          labels=labels))
        assert peak < N * V * 4 / 2, (V, peak)


def test_invalid_inputs_are_named() -> None:
    """ATT-11 / SMX: undeclared tiles, a bad block and mismatched delta inputs raise InvalidInputError."""
    q, k, v, dout = _qkv(1, 2, 2, 8, 8, 16, seed=1, dtype=torch.float32)
    with pytest.raises(InvalidInputError, match="tile"):
        TILED.attention(q, k, v, tiles=(48, 48))
    with pytest.raises(InvalidInputError, match="tile"):
        TiledReferenceBackend(tiles=(8, 8))
    with pytest.raises(InvalidInputError, match="block"):
        TILED.softmax_stats(q[0, 0], block=0)
    for backend in (REF, TILED):
        with pytest.raises(InvalidInputError, match="shape"):
            backend.attention_delta(q, dout[:, :, :4])
