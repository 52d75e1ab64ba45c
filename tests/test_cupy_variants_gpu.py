"""The CuPy backend's attention variants (SPEC VAR window, VLEN, DEC) against the reference backend on float64
copies of the inputs (GPU only; skipped unless CUDA and CuPy both run here, as tests/test_cupy_backend_gpu.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from implementations.base import poisoned_outputs
from tests.test_cupy_backend_gpu import BACKEND, DEV, SKIP, _att_inputs

pytestmark = pytest.mark.skipif(BACKEND is None, reason=f"cupy backend unavailable: {SKIP}")

def _reference():
    from implementations.reference import ReferenceBackend

    return ReferenceBackend()


def _close(got: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    got, ref = got.double().cpu(), ref.double().cpu()
    fin = torch.isfinite(ref)
    assert torch.equal(got[~fin], ref[~fin])
    if fin.any():
        assert float((got - ref)[fin].abs().max()) <= rel * max(1.0, float(ref[fin].abs().max()))


@pytest.mark.parametrize("causal, window", [(None, (64, 0)), ("bottom_right", (100, -1)), (None, (-1, 7)),
                                            ("top_left", (0, 0))], ids=str)
def test_window_forward(causal, window) -> None:
    q, k, v, _ = _att_inputs((1, 4, 2, 300, 333, 64, torch.bfloat16, None, None), 31)
    with poisoned_outputs():
        out, lse = BACKEND.attention(q, k, v, causal=causal, window=window)
    ref_out, ref_lse = _reference().attention(*(x.cpu().double() for x in (q, k, v)), causal=causal, window=window)
    _close(out, ref_out, 2e-2)
    _close(lse, ref_lse, 1e-2)


def test_window_backward() -> None:
    q, k, v, dout = _att_inputs((1, 4, 2, 200, 260, 64, torch.bfloat16, None, None), 32)
    for causal, window in ((None, (40, 3)), ("bottom_right", (70, -1)), ("top_left", (-1, 5))):
        out, lse = BACKEND.attention(q, k, v, causal=causal, window=window)
        with poisoned_outputs():
            grads = BACKEND.attention_backward(q, k, v, out, lse, dout, causal=causal, window=window)
        ref = _reference().attention_backward(*(x.cpu().double() for x in (q, k, v, out, lse, dout)), causal=causal,
                                              window=window)
        for got, want in zip(grads, ref):
            _close(got, want, 3e-2)


def test_varlen_forward() -> None:
    lens_q, lens_k = [5, 0, 300, 129, 64], [9, 4, 211, 129, 0]
    cu_q = torch.tensor([0, *np.cumsum(lens_q)], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, *np.cumsum(lens_k)], dtype=torch.int32, device=DEV)
    g = torch.Generator(device=DEV).manual_seed(33)
    q = torch.randn(sum(lens_q), 4, 64, device=DEV, generator=g).to(torch.bfloat16)
    k, v = (torch.randn(sum(lens_k), 2, 64, device=DEV, generator=g).to(torch.bfloat16) for _ in range(2))
    for causal, window in ((None, None), ("bottom_right", None), ("top_left", (32, -1))):
        with poisoned_outputs():
            out, lse = BACKEND.attention_varlen(q, k, v, cu_q, cu_k, 300, 211, causal=causal, window=window)
        ref = _reference().attention_varlen(*(x.cpu().double() for x in (q, k, v)), cu_q.cpu(), cu_k.cpu(), 300, 211,
                                            causal=causal, window=window)
        _close(out, ref[0], 2e-2)
        _close(lse, ref[1], 1e-2)


def test_varlen_backward() -> None:
    lens_q, lens_k = [70, 0, 129, 3], [65, 8, 200, 0]
    cu_q = torch.tensor([0, *np.cumsum(lens_q)], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, *np.cumsum(lens_k)], dtype=torch.int32, device=DEV)
    g = torch.Generator(device=DEV).manual_seed(35)
    q, dout = (torch.randn(sum(lens_q), 4, 64, device=DEV, generator=g).to(torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(sum(lens_k), 2, 64, device=DEV, generator=g).to(torch.bfloat16) for _ in range(2))
    for causal, window in ((None, None), ("bottom_right", (40, -1))):
        out, lse = BACKEND.attention_varlen(q, k, v, cu_q, cu_k, 129, 200, causal=causal, window=window)
        with poisoned_outputs():
            grads = BACKEND.attention_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, 129, 200, causal=causal,
                                                      window=window)
        ref = _reference().attention_varlen_backward(*(x.cpu().double() for x in (q, k, v, out, lse, dout)),
                                                     cu_q.cpu(), cu_k.cpu(), 129, 200, causal=causal, window=window)
        for got, want in zip(grads, ref):
            _close(got, want, 3e-2)


@pytest.mark.parametrize("sq, page, splits", [(1, 16, None), (4, 64, 3), (16, 16, 1)], ids=str)
def test_decode_paged(sq: int, page: int, splits: int | None) -> None:
    lens = [1000, 17, 4096, 333]
    per_seq = -(-max(lens) // page)
    g = torch.Generator(device=DEV).manual_seed(34)
    pages = len(lens) * per_seq
    k_pages, v_pages = (torch.randn(pages, page, 2, 128, device=DEV, generator=g).to(torch.bfloat16) for _ in range(2))
    table = torch.randperm(pages, device=DEV, generator=g).to(torch.int32).view(len(lens), per_seq)
    q = torch.randn(len(lens), 8, sq, 128, device=DEV, generator=g).to(torch.bfloat16)
    kv_lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    with poisoned_outputs():
        out, lse = BACKEND.attention_decode_paged(q, k_pages, v_pages, table, kv_lens, num_splits=splits)
    ref = _reference().attention_decode_paged(q.cpu().double(), k_pages.cpu().double(), v_pages.cpu().double(),
                                              table.cpu(), kv_lens.cpu(), num_splits=splits)
    _close(out, ref[0], 2e-2)
    _close(lse, ref[1], 1e-2)


#: relative tolerance of out and lse per input dtype (the kernel computes in float32)
DECODE_REL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 5e-4}


def _paged_cache(lens: list[int], page: int, Hk: int, D: int, dtype: torch.dtype, g: torch.Generator,
                 padded_d: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(k_pages, v_pages, block_table)``: the sequences' pages in shuffled order in a pool with 3 unused pages,
    every key row past a sequence's length and every unused page NaN (read, they would make out NaN).
    ``padded_d > 0`` stores the pages as the first D dims of wider rows (strides no multiple of 8)."""
    per_seq = -(-max(lens) // page)
    pool = len(lens) * per_seq + 3
    order = torch.randperm(pool, device=DEV, generator=g).to(torch.int32)
    table = order[: len(lens) * per_seq].view(len(lens), per_seq)
    caches = []
    for _ in range(2):
        x = torch.randn(pool, page, Hk, D + padded_d, device=DEV, generator=g).to(dtype)
        keep = torch.zeros(pool, page, dtype=torch.bool, device=DEV)
        for b, length in enumerate(lens):
            keep[table[b].long()] = torch.arange(per_seq * page, device=DEV).view(per_seq, page) < length
        x[~keep] = float("nan")
        caches.append(x[..., :D])
    return caches[0], caches[1], table


def _decode_reference(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, table: torch.Tensor,
                      lens: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference backend's float64 decode, per sequence; a sequence shorter than Sq (below the contract)
    gives its first Sq - kv_len queries no key (out 0, lse -inf) and its last kv_len queries the reference's
    result for Sq = kv_len, which is what query i seeing keys j <= kv_len - Sq + i means."""
    Sq = q.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:3], -math.inf, dtype=torch.float64)
    for b, length in enumerate(lens):
        first = max(0, Sq - length)
        ref = _reference().attention_decode_paged(
            q[b:b + 1, :, first:].cpu().double(), k_pages.cpu().double(), v_pages.cpu().double(),
            table[b:b + 1].cpu(), torch.tensor([length], dtype=torch.int32), scale=scale)
        out[b, :, first:], lse[b, :, first:] = ref[0][0], ref[1][0]
    return out, lse


@pytest.mark.parametrize("lens, page, Hq, Hk, Sq, D, dtype, splits, padded_d", [
    ([1, 17, 16, 1000], 16, 8, 2, 1, 128, torch.bfloat16, None, 0),  # a page + 1, one key, one page exactly
    ([16, 17, 300, 2049], 16, 16, 2, 16, 64, torch.float16, 3, 0),  # GROUP 8 x Sq 16: 16 chunks of 8 rows
    ([5, 700], 64, 4, 4, 4, 256, torch.float32, None, 0),  # float32, D 256 (32 threads a key), no GQA
    ([20, 1500], 16, 4, 2, 2, 128, torch.bfloat16, 64, 0),  # 64 splits of 24 keys: most of sequence 0's empty
    ([7, 50, 333], 7, 6, 2, 4, 100, torch.bfloat16, 5, 0),  # page 7, GROUP 3 x Sq 4 = 12 rows, D % 8 != 0
    ([100, 900], 64, 8, 8, 1, 128, torch.float16, None, 4),  # strides no multiple of 8: element loads
    ([64, 515], 16, 32, 1, 2, 64, torch.float32, 2, 0),  # MQA: 64 rows of one KV head
], ids=str)
def test_decode_paged_edges(lens, page, Hq, Hk, Sq, D, dtype, splits, padded_d) -> None:  # noqa: ANN001
    """DEC-1, DEC-2 on the shapes that exercise decode_split's layout: row chunks, key groups, splits with no
    key, pages of any size in any order, the element-load path; NaN past each sequence's end must not be read."""
    g = torch.Generator(device=DEV).manual_seed(len(lens) * page + D)
    k_pages, v_pages, table = _paged_cache(lens, page, Hk, D, dtype, g, padded_d)
    q = torch.randn(len(lens), Hq, Sq, D, device=DEV, generator=g).to(dtype)
    kv_lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    with poisoned_outputs():
        out, lse = BACKEND.attention_decode_paged(q, k_pages, v_pages, table, kv_lens, num_splits=splits)
    ref_out, ref_lse = _decode_reference(q, k_pages, v_pages, table, lens, D ** -0.5)
    _close(out, ref_out, DECODE_REL[dtype])
    _close(lse, ref_lse, DECODE_REL[dtype])


@pytest.mark.parametrize("splits", [None, 1, 7])
def test_decode_kernel_rows_without_keys(splits: int | None) -> None:
    """Below the contract (which refuses kv_lens < Sq), the kernel gives a query that sees no key out 0 and
    lse -inf, and the others their attention over the keys they see."""
    from implementations.cupy.variant_ops import decode_paged

    lens, Sq, D = [3, 40, 1], 8, 64
    g = torch.Generator(device=DEV).manual_seed(36)
    k_pages, v_pages, table = _paged_cache(lens, 16, 2, D, torch.bfloat16, g)
    q = torch.randn(len(lens), 4, Sq, D, device=DEV, generator=g).to(torch.bfloat16)
    out, lse = decode_paged(q, k_pages, v_pages, table, torch.tensor(lens, dtype=torch.int32, device=DEV), 0.2,
                            splits)
    ref_out, ref_lse = _decode_reference(q, k_pages, v_pages, table, lens, 0.2)
    assert torch.isinf(ref_lse).sum() == 4 * (5 + 7)
    _close(out, ref_out, 2e-2)
    _close(lse, ref_lse, 1e-2)
