"""Compiling the ``.cu`` sources with NVRTC through ``cupy.RawModule`` and launching them on torch's stream.

Each kernel instantiation (a C++ name expression such as ``attn_fwd<bf16_t, 128, 2, 64, true>``) gets a
module of its own, compiled on first use and kept in CuPy's on-disk kernel cache. Options: ``-lineinfo``
and ``--std=c++17`` here; CuPy itself appends ``-arch=sm_XY`` of the current device (``sm_90`` on an
H100/H200, so cubins, not PTX) and ``-ftz=true``.

Tensors are passed to a kernel as their device addresses (:func:`pointer`), a 64-bit integer argument in
the place of the kernel's pointer parameter: no CuPy array is made for them. A DLPack view per tensor cost
27 µs of host time (``reports/gpu/kernels/cupy-launch.json``), most of the host time of a small call. The
tensors stay referenced by the caller until the launch is queued, and torch's allocator reuses freed memory
in stream order, so a tensor freed after the launch is not overwritten before the kernel has read it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

import cupy
from implementations.cupy.sources import source

OPTIONS: tuple[str, ...] = ("-lineinfo", "--std=c++17")

#: the C++ storage type of each torch dtype the kernels take
CXX_TYPE: dict[torch.dtype, str] = {torch.bfloat16: "bf16_t", torch.float16: "f16_t", torch.float32: "float"}


@functools.cache
def _kernel(name: str, expr: str, device: int) -> cupy.RawKernel:
    with cupy.cuda.Device(device):
        module = cupy.RawModule(code=source(name), options=OPTIONS, name_expressions=(expr,))
        return module.get_function(expr)


def kernel(name: str, expr: str, device: torch.device) -> cupy.RawKernel:
    """The compiled kernel ``expr`` of ``name.cu`` for ``device`` (compiled once per process and device)."""
    return _kernel(name, expr, device.index if device.index is not None else torch.cuda.current_device())


def cxx_bool(flag: bool) -> str:
    return "true" if flag else "false"


def pointer(t: torch.Tensor, device: int) -> np.uint64:
    """The address of ``t``'s first element as a pointer argument; ``t`` must be on CUDA device ``device``."""
    if not t.is_cuda or t.get_device() != device:
        raise ValueError(f"a kernel on cuda:{device} was given a tensor on {t.device}")
    return np.uint64(t.data_ptr())


def null_pointer() -> np.uint64:
    """A null pointer kernel argument."""
    return np.uint64(0)


@functools.lru_cache(maxsize=64)
def _cupy_stream(handle: int, device: int) -> cupy.cuda.ExternalStream:
    """CuPy's handle on the CUDA stream ``handle`` (a torch stream's ``cuda_stream``) of ``device``, made once
    per stream: the handle does not own the stream, so a cached one is as good as a new one, and making one on
    every launch would add to each launch's host time.

    ``ExternalStream`` although CuPy 14 deprecates it (one warning per stream, as it is cached): entering a
    cached ``Stream.from_external(torch_stream)`` with the device measured 11.2 µs a launch against 2.5 µs,
    and the harness's reduction of 2^26 floats 0.204 ms against 0.092 ms (H200, CuPy 14.2)."""
    return cupy.cuda.ExternalStream(handle, device)


def launch(
    kern: cupy.RawKernel,
    grid: tuple[int, ...],
    block: tuple[int, ...],
    args: Sequence[object],
    device: torch.device,
    shared_mem: int = 0,
) -> None:
    """Launch ``kern`` on torch's current stream of ``device``; torch tensors in ``args`` pass their addresses.

    Integer and float scalars must already be NumPy scalars of the C type the kernel takes.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), _cupy_stream(torch.cuda.current_stream(index).cuda_stream, index):
        if shared_mem > 48 * 1024 and kern.max_dynamic_shared_size_bytes < shared_mem:
            kern.max_dynamic_shared_size_bytes = shared_mem
        converted = tuple(pointer(a, index) if isinstance(a, torch.Tensor) else a for a in args)
        kern(grid, block, converted, shared_mem=shared_mem)


def i64(x: int) -> np.int64:
    return np.int64(x)


def i32(x: int) -> np.int32:
    if not -(2**31) <= x < 2**31:
        raise OverflowError(f"{x} does not fit a 32-bit kernel argument")
    return np.int32(x)


def f32(x: float) -> np.float32:
    return np.float32(x)
