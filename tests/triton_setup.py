"""Shared set-up of the Triton backend tests: where the kernels run and how inputs are drawn.

By default the kernels run on the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1`` is set on
import, before Triton is imported) on small shapes. With ``ATTNSPEC_TRITON_CUDA=1`` the same tests run
compiled on the CUDA device, on larger shapes. Import this module before anything that imports Triton.
"""

from __future__ import annotations

import os
import zlib

ON_CUDA = os.environ.get("ATTNSPEC_TRITON_CUDA") == "1"
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
if ON_CUDA and not torch.cuda.is_available():
    pytest.skip("ATTNSPEC_TRITON_CUDA=1 but no CUDA device", allow_module_level=True)

DEVICE = "cuda" if ON_CUDA else "cpu"
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from the test case, so every case draws its own fresh inputs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)
