"""Helpers shared by the Triton kernels: interpreter detection, a matrix-product helper, launch configs.

The Triton interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors with NumPy. In Triton 3.9 its
``tl.dot`` multiplies bfloat16 operands as their raw 16-bit integer storage, so on the interpreter every
product is taken on operands upcast to float32 (:func:`mma` with ``UPCAST``). Upcasting a bfloat16 or
float16 value to float32 is exact, so the result equals a 16-bit product accumulated in float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2): log(x) = log2(x) * LN2
#: the same constants for use inside kernels (Triton kernels read only constexpr globals)
LOG2E_K = tl.constexpr(LOG2E)
LN2_K = tl.constexpr(LN2)


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to run kernels on the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def block_d(head_dim: int) -> int:
    """Head-dim tile: the next power of two, at least 16 (``tl.dot`` needs K >= 16); columns >= D are masked."""
    return max(16, next_pow2(head_dim))


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: "ieee" for float32 inputs, so they are never rounded to TF32
    (exact products on the FMA units); 16-bit inputs are multiplied exactly by the tensor cores anyway.
    """
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast_dots(device: torch.device) -> bool:
    """Whether products must be upcast to float32: only on the interpreter (see the module docstring)."""
    return device.type == "cpu"


@dataclass(frozen=True)
class LaunchConfig:
    """One kernel launch shape: a tile of ``block_m`` x ``block_n``, Triton's warps and pipeline stages, and
    whether streamed tiles go through tensor descriptors (``tma``: Hopper's copy engine, where
    :func:`tma_eligible` allows)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 1
    tma: bool = False


#: shared memory a config may plan for (the H200 allows 227 KiB a block; keep room for the compiler)
SMEM_BUDGET = 160 * 1024


def fit_stages(cfg: LaunchConfig, streamed: int, resident: int) -> LaunchConfig:
    """``cfg`` with ``num_stages`` lowered until the pipelined tiles fit :data:`SMEM_BUDGET`.

    ``streamed``: bytes of the tiles loaded each loop iteration (kept ``num_stages`` deep);
    ``resident``: bytes of the tiles loaded once per program.
    """
    stages = cfg.num_stages
    while stages > 1 and stages * streamed + resident > SMEM_BUDGET:
        stages -= 1
    return replace(cfg, num_stages=stages)


def has_tensor_descriptors(device: torch.device) -> bool:
    """Whether compiled kernels on ``device`` can load tiles through tensor descriptors (compute capability 9+)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def tma_eligible(*tensors: torch.Tensor) -> bool:
    """Whether every tensor can be described to the copy engine: 16-bit elements, unit stride along the last
    dim, 16-byte aligned start and strides (the tensor-map rules)."""
    return all(t.element_size() == 2 and t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1]) for t in tensors)


def launch_strides(t: torch.Tensor, varlen: bool) -> tuple[int, ...]:
    """``t``'s strides for a kernel launch; the batch stride is 0 for a varlen view (one packed batch entry)."""
    return (0, *t.stride()[1:]) if varlen else tuple(t.stride())


def provide_descriptor_memory(device: torch.device) -> None:
    """Give Triton the allocator through which a launch gets the global memory its in-kernel tensor
    descriptors are written to (``tl.make_tensor_descriptor``); the buffers come from torch's caching allocator."""
    def allocate(size: int, alignment: int, stream: int | None) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(allocate)


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in float32; ``UPCAST`` multiplies float32 copies (interpreter, see module docstring)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def load_tile(ptrs, row_ok, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    """A ``[rows, D]`` tile at ``ptrs``, zero outside the rows ``row_ok`` when ``MASKED`` and outside the head
    dims ``d_ok`` unless ``EVEN_D``; an unmasked load where neither applies."""
    if MASKED:
        if EVEN_D:
            return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            return tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=d_ok[None, :], other=0.0)


@triton.jit
def row_tile(src, row0, offs_d, stride_row, stride_d, n_rows, D,
             ROWS: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr):
    """Rows ``[row0, row0 + ROWS)`` x head dims ``[0, BLOCK_D)`` of one head, zero past ``n_rows`` and ``D``.

    ``TMA``: ``src`` is a tensor descriptor of the head (:func:`head_rows`); the copy engine zero-fills rows and
    columns outside the tensor, so no mask is computed. Otherwise ``src`` points at the head's row 0.
    """
    if TMA:
        return src.load([row0, 0])
    else:
        rows = row0 + tl.arange(0, ROWS)
        ptrs = src + rows[:, None] * stride_row + offs_d[None, :] * stride_d
        return load_tile(ptrs, rows < n_rows, offs_d < D, MASKED, EVEN_D)


@triton.jit
def tile_sources(a_base, b_base, stride_a, stride_b, n_rows, D,
                 ROWS: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr):
    """Where the streamed ``[ROWS, BLOCK_D]`` tiles of two heads of ``n_rows x D`` (K and V, or Q and dO) come
    from: tensor descriptors of each head (``TMA``, for :func:`row_tile`) or the heads' row-0 pointers."""
    if TMA:
        a_src = tl.make_tensor_descriptor(a_base, shape=[n_rows, D], strides=[stride_a, 1],
                                          block_shape=[ROWS, BLOCK_D])
        b_src = tl.make_tensor_descriptor(b_base, shape=[n_rows, D], strides=[stride_b, 1],
                                          block_shape=[ROWS, BLOCK_D])
    else:
        a_src = a_base
        b_src = b_base
    return a_src, b_src


@triton.jit
def compensated_add(total, comp, x):
    """Kahan summation: ``total + x`` with the rounding error carried in ``comp``; returns ``(total, comp)``."""
    y = x - comp
    t = total + y
    return t, (t - total) - y
