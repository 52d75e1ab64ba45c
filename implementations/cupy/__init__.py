"""CuPy raw-kernel backend: CUDA C++ sources (``*.cu`` beside this file) compiled by NVRTC through
``cupy.RawModule`` and launched on torch's stream, with tensors passed as their device addresses.

``backends()`` is the registry factory (``implementations.cupy:backends``). It raises
:class:`~implementations.base.BackendUnavailable` with the reason when the kernels cannot run here: CuPy
missing, no CUDA device, or a GPU older than sm_80 (the kernels use bf16 ``mma.sync``, ``ldmatrix`` and
``cp.async``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from implementations.base import BackendUnavailable

if TYPE_CHECKING:
    from implementations.cupy.backend import CupyBackend

MIN_COMPUTE_CAPABILITY = (8, 0)


def backends() -> CupyBackend:
    """The ``cupy`` backend, or :class:`BackendUnavailable` saying why it cannot run on this machine."""
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(f"cupy is not installed (pip install cupy-cuda13x): {exc}") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device: cupy kernels need a GPU (torch.cuda.is_available() is False)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise BackendUnavailable(f"no CUDA device: cupy kernels need a GPU (CuPy's CUDA runtime: {exc})") from exc
    if count == 0:
        raise BackendUnavailable("no CUDA device: cupy kernels need a GPU (CuPy sees none)")
    cc = torch.cuda.get_device_capability()
    if cc < MIN_COMPUTE_CAPABILITY:
        raise BackendUnavailable(f"GPU compute capability {cc[0]}.{cc[1]} is below 8.0, which bf16 mma.sync, "
                                 "ldmatrix and cp.async need")
    from implementations.cupy.backend import CupyBackend

    return CupyBackend()


__all__ = ["backends"]
