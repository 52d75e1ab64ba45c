"""The CuPy backend's attention variants (SPEC VAR window, VLEN, DEC) against the reference backend on float64
copies of the inputs (GPU only; skipped unless CUDA and CuPy both run here, as tests/test_cupy_backend_gpu.py).
"""

from __future__ import annotations

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
