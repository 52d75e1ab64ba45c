"""The CuPy launchers pass each kernel exactly the parameters its CUDA signature declares, with matching C types
(pointers, int, i64, float), for dense, windowed, packed (varlen) and paged-decode calls. No GPU: CuPy is
replaced by a stub for the duration of each test and the launches are recorded instead of run."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

SOURCES = Path(__file__).resolve().parents[1] / "implementations" / "cupy"
BF16 = torch.bfloat16


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, tuple]]]:
    """Launches of the CuPy launchers as ``(file, kernel expression, args)``; the stubbed modules are removed
    afterwards, so other tests import the real (absent) CuPy."""
    ours = [n for n in sys.modules if n == "cupy" or n.startswith("implementations.cupy")]
    saved = {name: sys.modules[name] for name in ours}
    for name in saved:
        del sys.modules[name]
    stub = types.ModuleType("cupy")
    stub.cuda = types.SimpleNamespace(ExternalStream=None)
    stub.RawKernel = stub.ndarray = object
    sys.modules["cupy"] = stub
    from implementations.cupy import _kernels

    recorded: list[tuple[str, str, tuple]] = []
    monkeypatch.setattr(_kernels, "kernel", lambda file, expr, device: (file, expr))
    monkeypatch.setattr(_kernels, "launch", lambda kern, grid, block, args, device, shared_mem=0:
                        recorded.append((*kern, tuple(args))))
    yield recorded
    for name in [n for n in sys.modules if n == "cupy" or n.startswith("implementations.cupy")]:
        del sys.modules[name]
    sys.modules.update(saved)


def parameters(file: str, kernel: str) -> list[str]:
    """The parameter declarations of ``kernel`` in ``file.cu``."""
    text = (SOURCES / f"{file}.cu").read_text()
    match = re.search(rf"\b{kernel}\(\s*(.*?)\)\s*\{{", text, re.S)
    assert match, f"{kernel} not found in {file}.cu"
    return [p.strip() for p in match.group(1).split(",")]


def matches(declaration: str, arg: object) -> bool:
    """Whether a launch argument has the C type of ``declaration``."""
    if "*" in declaration:
        return isinstance(arg, torch.Tensor) or isinstance(arg, np.uint64)
    kind = declaration.split()[0]
    return isinstance(arg, {"int": np.int32, "i64": np.int64, "float": np.float32}[kind])


def test_every_launch_matches_its_kernel_signature(launches: list) -> None:
    from implementations.cupy import attention, variant_ops

    q, k = torch.zeros(2, 4, 100, 64, dtype=BF16), torch.zeros(2, 2, 120, 64, dtype=BF16)
    attention.attention_forward(q, k, k, "bottom_right", 0.1, window=(10, 2))
    attention.launch_backward(q, k, k, q, torch.zeros(2, 4, 100), q, (q.clone(), k.clone(), k.clone()), None,
                              (5, -1), 0.1)
    cu = torch.tensor([0, 50, 100], dtype=torch.int32)
    qv, kv = torch.zeros(100, 4, 64, dtype=BF16), torch.zeros(100, 2, 64, dtype=BF16)
    packed = variant_ops.packed
    lse = torch.zeros(4, 100).unsqueeze(0)
    attention.launch_forward(packed(qv), packed(kv), packed(kv), packed(qv.clone()), lse, "top_left", None, 0.1,
                             cu_seqlens=(cu, cu, 50))
    attention.launch_backward(packed(qv), packed(kv), packed(kv), packed(qv), lse, packed(qv),
                              tuple(packed(g) for g in (qv.clone(), kv.clone(), kv.clone())), None, None, 0.1,
                              cu_seqlens=(cu, cu, 50, 50))
    pages = torch.zeros(20, 16, 2, 64, dtype=BF16)
    variant_ops.decode_paged(torch.zeros(2, 4, 1, 64, dtype=BF16), pages, pages, torch.zeros(2, 10, dtype=torch.int32),
                             torch.tensor([50, 60], dtype=torch.int32), 0.1, 3)
    kernels = [expr.split("<")[0] for _, expr, _ in launches]
    assert kernels == ["attn_fwd", "attn_delta", "attn_bwd_dkdv", "attn_bwd_dq"] * 2 + ["decode_split", "decode_merge"]
    for file, expr, args in launches:
        declared = parameters(file, expr.split("<")[0])
        assert len(declared) == len(args), f"{expr}: {len(args)} arguments for {len(declared)} parameters"
        wrong = [(d, type(a).__name__) for d, a in zip(declared, args) if not matches(d, a)]
        assert not wrong, f"{expr}: arguments of the wrong C type {wrong}"


@pytest.mark.parametrize("D, heads, Sq, padded, expr", [
    (128, (32, 8), 1, 0, "decode_split<bf16_t, 16, 4, true>"),  # the benchmark: GQA 4, 4 rows a CTA
    (100, (12, 2), 4, 0, "decode_split<bf16_t, 16, 8, false>"),  # D % 8 != 0: element loads; 24 rows, 3 CTAs
    (64, (4, 4), 1, 4, "decode_split<bf16_t, 8, 1, false>"),  # page strides no multiple of 8
    (8, (2, 1), 16, 0, "decode_split<bf16_t, 1, 8, true>"),  # one thread a key
])
def test_decode_layout_and_splits(launches: list, D: int, heads: tuple[int, int], Sq: int, padded: int,
                                  expr: str) -> None:
    """decode_split's instantiation follows D (threads per key), the KV head's query rows (rows per CTA, at most
    8) and the alignment; each split starts at a multiple of 16 keys and the splits cover the block table."""
    from implementations.cupy import variant_ops

    Hq, Hk = heads
    pages = torch.zeros(30, 16, Hk, D + padded, dtype=BF16)[..., :D]
    variant_ops.decode_paged(torch.zeros(2, Hq, Sq, D, dtype=BF16), pages, pages,
                             torch.zeros(2, 25, dtype=torch.int32), torch.tensor([50, 400], dtype=torch.int32), 0.1, 7)
    (_, got, args), _merge = launches
    keys_per_split = int(args[13])
    assert got == expr
    assert keys_per_split % 16 == 0 and 6 * keys_per_split < 25 * 16 <= 7 * keys_per_split


def test_a_tensor_off_the_launch_device_is_refused(launches: list) -> None:
    """Tensors pass as bare addresses, so the launcher itself must refuse one that is not on the kernel's GPU."""
    from implementations.cupy import _kernels

    with pytest.raises(ValueError, match="kernel on cuda:0 was given a tensor on cpu"):
        _kernels.pointer(torch.zeros(3), 0)
