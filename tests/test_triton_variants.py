"""The Triton kernels' attention variants (window, softcap, ALiBi, varlen, paged decode, fp8) against float64
computations of the variant formulas (SPEC's variant clauses), on the interpreter with tiny shapes.

The kernels run with 16-row/16-key tiles so that every case crosses several blocks: masked band edges, the
unmasked middle, ragged ends and rows that see no key (ATT-4: out 0, lse -inf).
"""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("interpreter tests; the GPU runs the conformance chapters", allow_module_level=True)
os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from implementations.triton.attention_bwd import BackwardConfig, attention_backward  # noqa: E402
from implementations.triton.attention_fwd import attention_forward, attention_fp8  # noqa: E402
from implementations.triton.common import LaunchConfig  # noqa: E402
from implementations.triton.decode_paged import attention_decode_paged  # noqa: E402
from implementations.triton.variants import KernelVariants  # noqa: E402
from implementations.triton.varlen import attention_varlen_backward, attention_varlen_forward  # noqa: E402

TILE = LaunchConfig(16, 16)
BWD = BackwardConfig(TILE, TILE)
F32 = torch.float32


def band_mask(sq: int, sk: int, causal: str | None, window: tuple[int, int] | None) -> torch.Tensor:
    """``[sq, sk]`` bool: key j visible to query i (ATT-3 causal AND the bottom-right window)."""
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    mask = torch.ones(sq, sk, dtype=torch.bool)
    if causal is not None:
        mask &= j <= i + (sk - sq if causal == "bottom_right" else 0)
    if window is not None:
        left, right = window
        if left >= 0:
            mask &= j >= i + sk - sq - left
        if right >= 0:
            mask &= j <= i + sk - sq + right
    return mask


def oracle(q, k, v, scale, causal=None, window=None, softcap=None, slopes=None, dout=None):
    """float64 ``(out, lse, grads)`` of ``[B, H, S, D]`` inputs by the variant formulas; grads by autograd."""
    q64, k64, v64 = (x.detach().double().requires_grad_(dout is not None) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    kx, vx = k64.repeat_interleave(group, 1), v64.repeat_interleave(group, 1)
    s = scale * q64 @ kx.transpose(-1, -2)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    sq, sk = s.shape[-2:]
    if slopes is not None:
        dist = (torch.arange(sq)[:, None] + sk - sq - torch.arange(sk)[None, :]).abs().double()
        s = s - slopes.double()[None, :, None, None] * dist
    s = s.masked_fill(~band_mask(sq, sk, causal, window), float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = p @ vx
    grads = None
    if dout is not None:
        out.backward(dout.double())
        grads = (q64.grad, k64.grad, v64.grad)
    return out.detach(), lse.detach(), grads


def close(got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """``got`` within ``tol`` (relative to ref's magnitude) where ref is finite, and equal where it is not."""
    got, ref = got.double(), ref.double()
    finite = torch.isfinite(ref)
    assert torch.equal(got[~finite], ref[~finite])
    if finite.any():
        assert float((got - ref)[finite].abs().max()) <= tol * max(1.0, float(ref[finite].abs().max()))


def draw(shape: tuple[int, ...], seed: int, dtype: torch.dtype = F32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# (Hq, Hk, Sq, Sk, causal, window, softcap, alibi): window edges inside blocks, Sq != Sk both ways, rows with no
# visible key (window right of a top-left diagonal; a left bound past the keys), GQA
VARIANT_CASES = [
    (2, 1, 40, 70, None, (5, 3), None, False),
    (2, 2, 70, 40, "bottom_right", (17, -1), None, False),
    (1, 1, 48, 48, "top_left", (-1, 20), None, False),
    (2, 1, 33, 50, None, (-1, 0), None, False),
    (1, 1, 30, 20, None, (0, 0), None, False),
    (2, 2, 40, 56, "top_left", (3, -1), 5.0, False),
    (2, 1, 45, 45, None, None, 2.0, True),
    (2, 1, 37, 66, "bottom_right", (9, 4), 3.0, True),
]


@pytest.mark.parametrize("case", VARIANT_CASES, ids=str)
def test_forward_and_backward_variants(case: tuple) -> None:
    hq, hk, sq, sk, causal, window, softcap, alibi = case
    q = draw((1, hq, sq, 24), 1) * 2.0  # larger logits, so the softcap's tanh bends
    k, v, dout = draw((1, hk, sk, 24), 2), draw((1, hk, sk, 24), 3), draw((1, hq, sq, 24), 4)
    slopes = torch.tensor([0.5, 0.125][:hq], dtype=F32) if alibi else None
    kw = dict(window=window, softcap=softcap, alibi_slopes=slopes)
    out, lse = attention_forward(q, k, v, causal, 0.3, TILE, **kw)
    ref_out, ref_lse, ref_grads = oracle(q, k, v, 0.3, causal, window, softcap, slopes, dout)
    close(out, ref_out, 2e-5)
    close(lse, ref_lse, 2e-5)
    grads = attention_backward(q, k, v, out, lse, dout, causal, 0.3, BWD, **kw)
    for got, ref in zip(grads, ref_grads):
        close(got, ref, 1e-4)


def test_window_rows_without_keys_follow_att4() -> None:
    q, k, v = draw((1, 1, 30, 16), 5), draw((1, 1, 20, 16), 6), draw((1, 1, 20, 16), 7)
    out, lse = attention_forward(q, k, v, None, 0.25, TILE, window=(0, 0))  # key i - 10 only: rows < 10 see none
    assert torch.equal(out[0, 0, :10], torch.zeros(10, 16))
    assert torch.isneginf(lse[0, 0, :10]).all() and torch.isfinite(lse[0, 0, 10:]).all()


def test_softcap_gradient_carries_the_tanh_derivative() -> None:
    """A cap that bends the logits changes dq from the uncapped value; the oracle's tanh derivative matches."""
    q = draw((1, 1, 32, 16), 8) * 3
    k, v, dout = draw((1, 1, 32, 16), 9), draw((1, 1, 32, 16), 10), draw((1, 1, 32, 16), 11)
    out, lse = attention_forward(q, k, v, None, 0.5, TILE, softcap=1.0)
    dq, _, _ = attention_backward(q, k, v, out, lse, dout, None, 0.5, BWD, softcap=1.0)
    _, _, (ref_dq, _, _) = oracle(q, k, v, 0.5, softcap=1.0, dout=dout)
    _, _, (uncapped_dq, _, _) = oracle(q, k, v, 0.5, dout=dout)
    close(dq, ref_dq, 1e-4)
    assert float((ref_dq - uncapped_dq).abs().max()) > 100 * 1e-4 * float(ref_dq.abs().max())


# ------------------------------------------------------------------------------------------------ varlen

def varlen_inputs(lens_q: list[int], lens_k: list[int], hq: int, hk: int, seed: int):
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    return cu_q, cu_k, draw((tq, hq, 16), seed), draw((tk, hk, 16), seed + 1), draw((tk, hk, 16), seed + 2)


@pytest.mark.parametrize("causal, window, softcap", [("bottom_right", None, None), ("top_left", (6, -1), None),
                                                     (None, (4, 2), 2.0)], ids=str)
def test_varlen_matches_each_sequence(causal, window, softcap) -> None:
    lens_q, lens_k = [5, 0, 37, 16, 3], [9, 4, 21, 16, 0]
    cu_q, cu_k, q, k, v = varlen_inputs(lens_q, lens_k, 2, 1, 20)
    dout = draw(q.shape, 30)
    variants = KernelVariants(causal, window, softcap)
    out, lse = attention_varlen_forward(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), variants, 0.35, TILE)
    grads = attention_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, max(lens_q), max(lens_k), variants,
                                      0.35, BWD)
    for s in range(len(lens_q)):
        rq, rk = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
        if rq.start == rq.stop:
            continue
        dense = [x[r].permute(1, 0, 2).unsqueeze(0) for x, r in ((q, rq), (k, rk), (v, rk), (dout, rq))]
        ref_out, ref_lse, ref_grads = oracle(*dense[:3], 0.35, causal, window, softcap, dout=dense[3])
        close(out[rq], ref_out[0].permute(1, 0, 2), 2e-5)
        close(lse[:, rq], ref_lse[0], 2e-5)
        for got, ref, r in zip(grads, ref_grads, (rq, rk, rk)):
            close(got[r], ref[0].permute(1, 0, 2), 1e-4)
    assert torch.equal(grads[1][int(cu_k[1]):int(cu_k[2])], torch.zeros(4, 1, 16))  # keys no query sees: dk 0


def test_varlen_does_not_leak() -> None:
    """Redrawing the other sequences leaves sequence 1's out, lse and gradients bit for bit unchanged."""
    lens = [20, 17, 26]
    cu, _, q, k, v = varlen_inputs(lens, lens, 1, 1, 40)
    dout = draw(q.shape, 50)
    own = slice(int(cu[1]), int(cu[2]))
    results = []
    for seed in (60, 70):
        _, _, q2, k2, v2 = varlen_inputs(lens, lens, 1, 1, seed)
        dout2 = draw(q.shape, seed + 5)
        for fresh, base in ((q2, q), (k2, k), (v2, v), (dout2, dout)):
            fresh[own] = base[own]
        variants = KernelVariants("top_left")
        out, lse = attention_varlen_forward(q2, k2, v2, cu, cu, 26, 26, variants, 0.3, TILE)
        grads = attention_varlen_backward(q2, k2, v2, out, lse, dout2, cu, cu, 26, 26, variants, 0.3, BWD)
        results.append((out[own], lse[:, own], *(g[own] for g in grads)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ paged decode

def paged(k: torch.Tensor, lens: list[int], page: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[B, Hk, S, D]`` keys cut into pages in a shuffled order: ``(pages, block_table)``."""
    B, Hk, S, D = k.shape
    per_seq = -(-S // page)
    order = torch.randperm(B * per_seq, generator=torch.Generator().manual_seed(seed))
    pages = torch.full((B * per_seq, page, Hk, D), float("nan"))
    table = order.view(B, per_seq).to(torch.int32)
    for b in range(B):
        for p in range(-(-lens[b] // page)):
            rows = k[b, :, p * page:(p + 1) * page].permute(1, 0, 2)
            pages[table[b, p], :rows.shape[0]] = rows
    return pages.nan_to_num(7.0), table  # slots past a length hold a value no visible key has


@pytest.mark.parametrize("sq, page, splits", [(1, 16, None), (3, 16, 3), (2, 4, 1), (1, 8, 5)], ids=str)
def test_paged_decode_matches_dense(sq: int, page: int, splits: int | None) -> None:
    lens = [137, 16, 5, 200]  # several 64-key tiles and splits, lengths off the page and tile sizes
    B, hq, hk, S = len(lens), 4, 2, 200
    q, k, v = draw((B, hq, sq, 16), 80), draw((B, hk, S, 16), 81), draw((B, hk, S, 16), 82)
    k_pages, table = paged(k, lens, page, 83)
    v_pages, _ = paged(v, lens, page, 83)
    out, lse = attention_decode_paged(q, k_pages, v_pages, table, torch.tensor(lens, dtype=torch.int32), 0.3,
                                      num_splits=splits)
    for b, n in enumerate(lens):
        ref_out, ref_lse, _ = oracle(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], 0.3, "bottom_right")
        close(out[b], ref_out[0], 2e-5)
        close(lse[b], ref_lse[0], 2e-5)


def test_paged_decode_splits_agree() -> None:
    """One split and many splits (empty ones included) give the same result up to rounding."""
    lens = [300, 9]  # 4 splits of 128 keys: three hold keys of sequence 0, sequence 1 has keys in one
    q, k, v = draw((2, 2, 2, 16), 90), draw((2, 1, 300, 16), 91), draw((2, 1, 300, 16), 92)
    k_pages, table = paged(k, lens, 16, 93)
    v_pages, _ = paged(v, lens, 16, 93)
    kv_lens = torch.tensor(lens, dtype=torch.int32)
    one = attention_decode_paged(q, k_pages, v_pages, table, kv_lens, 0.5, num_splits=1)
    many = attention_decode_paged(q, k_pages, v_pages, table, kv_lens, 0.5, num_splits=4)
    for a, b in zip(one, many):
        close(b, a, 2e-6)


# ------------------------------------------------------------------------------------------------ fp8

@pytest.mark.parametrize("causal", [None, "bottom_right"])
def test_fp8_forward_matches_dequantized(causal: str | None) -> None:
    e4m3 = torch.float8_e4m3fn
    q, k, v = (draw((1, 2, n, 32), seed).to(e4m3) for n, seed in ((40, 100), (56, 101), (56, 102)))
    descales = tuple(torch.tensor(d) for d in (0.5, 2.0, 0.25))
    out, lse = attention_fp8(q, k, v, descales, causal, 0.2, TILE)
    assert out.dtype == torch.bfloat16 and lse.dtype == F32
    deq = [x.double() * float(d) for x, d in zip((q, k, v), descales)]
    ref_out, ref_lse, _ = oracle(*deq, 0.2, causal)
    close(lse, ref_lse, 2e-5)
    close(out, ref_out, 2e-2)  # bfloat16 output and P


# ------------------------------------------------------------------------------------------------ the backend

def test_backend_declares_and_runs_the_variants() -> None:
    """Through the contract: declared variants and ops run and match the oracle; an undeclared bias is refused."""
    from implementations.base import InvalidInputError
    from implementations.triton import backends

    backend = backends()
    caps = backend.capabilities
    assert caps.attention_variants == {"window", "softcap", "alibi"}
    assert caps.fp8_dtypes == (torch.float8_e4m3fn,) and F32 in caps.varlen_dtypes and F32 in caps.decode_dtypes
    q, k, v = draw((1, 2, 24, 16), 110), draw((1, 1, 40, 16), 111), draw((1, 1, 40, 16), 112)
    slopes = torch.tensor([0.5, 0.25])
    out, lse = backend.attention(q, k, v, causal="bottom_right", window=(6, 1), softcap=2.0, alibi_slopes=slopes)
    ref_out, ref_lse, _ = oracle(q, k, v, 0.25, "bottom_right", (6, 1), 2.0, slopes)
    close(out, ref_out, 2e-5)
    close(lse, ref_lse, 2e-5)
    with pytest.raises(InvalidInputError, match="bias"):
        backend.attention(q, k, v, bias=torch.zeros(1, 2, 24, 40))
