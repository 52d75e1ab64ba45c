"""reference and reference-tiled on the attention variants against an independent float64 torch computation of
the interface's formulas (SPEC VAR, VLEN, DEC, FP8), written here without the oracle's code: dense attention
with window, softcap, bias and ALiBi (forward and autograd gradients), per-sequence varlen, gathered paged
decode for several split counts, fp8 on dequantized inputs."""

from __future__ import annotations

import math

import pytest
import torch

from implementations.reference import ReferenceBackend
from implementations.reference_tiled import TiledReferenceBackend

BACKENDS = (ReferenceBackend(), TiledReferenceBackend(tiles=(16, 16)))
F64 = torch.float64


def plain(q, k, v, causal=None, window=None, softcap=None, bias=None, alibi_slopes=None, scale=None):  # noqa: ANN001, ANN201
    """Softmax attention from the formulas: logits, cap, bias, ALiBi, then the causal AND window mask."""
    Sq, Sk = q.shape[2], k.shape[2]
    scale = scale or 1 / math.sqrt(q.shape[-1])
    kk, vv = (x.repeat_interleave(q.shape[1] // k.shape[1], 1) for x in (k, v))
    s = scale * q @ kk.transpose(-1, -2)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + (torch.where(bias, 0.0, -math.inf) if bias.dtype == torch.bool else bias)
    i, j = torch.arange(Sq)[:, None], torch.arange(Sk)[None, :]
    if alibi_slopes is not None:
        s = s - alibi_slopes.double()[:, None, None] * (i + Sk - Sq - j).abs()
    visible = torch.ones(Sq, Sk, dtype=torch.bool)
    if causal:
        visible &= j <= i + (0 if causal == "top_left" else Sk - Sq)
    if window:
        visible &= (j >= i + Sk - Sq - window[0]) | (window[0] < 0)
        visible &= (j <= i + Sk - Sq + window[1]) | (window[1] < 0)
    s = s.masked_fill(~visible, -math.inf)
    empty = s.isneginf().all(-1, keepdim=True)  # a row with no visible key: out 0, lse -inf, zero gradients
    lse = torch.logsumexp(s.masked_fill(empty, 0.0), -1)
    p = torch.exp(s.masked_fill(empty, 0.0) - lse[..., None]).masked_fill(empty, 0.0)
    return p @ vv, lse.masked_fill(empty[..., 0], -math.inf)


_G = torch.Generator().manual_seed(3)
VARIANTS = [dict(causal="bottom_right", window=(17, 0)), dict(window=(16, 15), softcap=0.5),
            dict(alibi_slopes=torch.rand(4, generator=_G)), dict(bias=torch.randn(33, 70, generator=_G)),
            dict(bias=torch.rand(2, 1, 33, 70, generator=_G) > 0.3, causal="top_left"),
            dict(window=(0, -1), causal="top_left")]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda kw: "-".join(kw))
def test_dense_variants(backend, kwargs: dict) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, s, 8, generator=g, dtype=F64) for h, s in ((4, 33), (2, 70), (2, 70)))
    out, lse = backend.attention(q, k, v, **kwargs)
    want_out, want_lse = plain(q, k, v, **kwargs)
    assert torch.allclose(out, want_out, atol=1e-12) and torch.equal(lse.isinf(), want_lse.isinf())
    assert torch.allclose(lse.nan_to_num(0, 0, 0), want_lse.nan_to_num(0, 0, 0), atol=1e-12)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    dout = torch.randn(out.shape, generator=g, dtype=F64)
    want = torch.autograd.grad(plain(*leaves, **kwargs)[0], leaves, dout)
    got = backend.attention_backward(q, k, v, out, lse, dout, **kwargs)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, want))


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_varlen_is_dense_per_sequence(backend) -> None:  # noqa: ANN001
    lq, lk = [3, 0, 40, 2, 17], [5, 3, 33, 0, 17]
    cu = [torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()], dtype=torch.int32) for n in (lq, lk)]
    q = torch.randn(sum(lq), 4, 8, dtype=F64)
    k, v = torch.randn(sum(lk), 2, 8, dtype=F64), torch.randn(sum(lk), 2, 8, dtype=F64)
    out, lse = backend.attention_varlen(q, k, v, *cu, 40, 33, causal="bottom_right", window=(2, 1))
    for b in range(len(lq)):
        rows, keys = slice(int(cu[0][b]), int(cu[0][b + 1])), slice(int(cu[1][b]), int(cu[1][b + 1]))
        o, lv = plain(*(x.transpose(0, 1)[None] for x in (q[rows], k[keys], v[keys])), causal="bottom_right",
                      window=(2, 1))
        assert torch.allclose(out[rows], o[0].transpose(0, 1), atol=1e-12)
        assert torch.equal(lse[:, rows].isinf(), lv[0].isinf())


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("num_splits", [None, 1, 3, 20])
def test_paged_decode_is_dense(backend, num_splits: int | None) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(2)
    lens, page = [5, 17, 9, 31, 2], 4
    k_pages, v_pages = (torch.randn(40, page, 2, 8, generator=g, dtype=F64) for _ in "kv")
    table = torch.randperm(40, generator=g)[:40].reshape(5, 8).to(torch.int32)
    q = torch.randn(5, 4, 2, 8, generator=g, dtype=F64)
    out, lse = backend.attention_decode_paged(q, k_pages, v_pages, table, torch.tensor(lens, dtype=torch.int32),
                                              num_splits=num_splits)
    for b, n in enumerate(lens):
        k, v = (x[table[b].long()].flatten(0, 1)[:n].transpose(0, 1)[None] for x in (k_pages, v_pages))
        o, lv = plain(q[b:b + 1], k, v, causal="bottom_right")
        assert torch.allclose(out[b], o[0], atol=1e-12) and torch.allclose(lse[b], lv[0], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_fp8_is_attention_on_dequantized_inputs(backend) -> None:  # noqa: ANN001
    q, k, v = (torch.randn(1, 2, 50, 16).to(torch.float8_e4m3fn) for _ in range(3))
    d = torch.tensor(0.5)
    out, lse = backend.attention_fp8(q, k, v, d, d, d, causal=True)
    want_out, want_lse = plain(*(x.double() * 0.5 for x in (q, k, v)), causal="top_left")
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert torch.allclose(out.double(), want_out, atol=2e-2) and torch.allclose(lse.double(), want_lse, atol=1e-5)
