"""Triton backend of attnspec: ``backends()`` is the factory registered as ``implementations.triton:backends``.

Kernels: ``attention_fwd``, ``attention_bwd``, ``softmax_stats``, ``kd_loss``, ``reduce``; the backend
object in ``backend``; training through ``autograd.triton_attention``. Design: NOTES.md; GPU figures: reports/gpu/.
"""

from __future__ import annotations

from ..base import BackendLike, BackendUnavailable


def backends() -> BackendLike:
    """The ``triton`` backend: compiled for CUDA, or on the CPU interpreter when ``TRITON_INTERPRET=1``.

    Raises :class:`BackendUnavailable` when Triton is missing, or when there is no CUDA device and the
    interpreter is not requested.
    """
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable("triton is not installed") from exc
    import torch

    from .common import interpreter_requested

    interpreter = interpreter_requested()
    if not interpreter and not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device and TRITON_INTERPRET is not set")
    from .backend import TritonBackend

    return TritonBackend(interpreter=interpreter)
