"""PyTorch's own attention as backends: ``torch`` on the CPU and, with CUDA, one backend per SDPA kernel.

``backends()`` (registered as ``implementations.torch_sdpa:backends``) returns

- ``torch`` (CPU, always): ``torch.nn.functional.scaled_dot_product_attention``'s CPU path. When torch's own
  selector (``torch._fused_sdp_choice``) picks its CPU flash kernel, ``out`` and ``lse`` both come from one
  call of ``aten._scaled_dot_product_flash_attention_for_cpu`` -- the op ``F.scaled_dot_product_attention``
  dispatches to, so ``out`` is bit-identical to SDPA's and consistent with ``lse``. Otherwise ``out`` is
  SDPA's and ``lse`` is computed from the scores with ``torch.logsumexp`` (said in the notes).
- ``torch-flash``, ``torch-efficient``, ``torch-cudnn``, ``torch-math`` (CUDA only): each runs one SDPA
  kernel -- the aten op that ``F.scaled_dot_product_attention`` calls for it under
  ``sdpa_kernel(SDPBackend.X)``, called directly so that its ``logsumexp`` output is the ``lse`` (the math
  kernel has none: its ``lse`` is computed from the scores). Before each call torch's own gate
  (``torch.backends.cuda.can_use_*_attention``) is asked; a refusal is an ``InvalidInputError`` carrying
  torch's reasons, and ``not_supported_reasons`` reports it for a case.

Modules: ``common`` (what the backends share), ``cpu``, ``cuda``.
"""

from __future__ import annotations

import torch

from implementations.base import Backend
from implementations.torch_sdpa.cpu import TorchCPUBackend
from implementations.torch_sdpa.cuda import CUDA_BACKENDS


def backends() -> list[Backend]:
    """``torch`` on the CPU, always; with CUDA, one backend per SDPA kernel this torch has.

    Building them touches no CUDA device beyond ``torch.cuda.is_available()``: hardware limits are asked
    of torch's gates when a case is checked or run.
    """
    made: list[Backend] = [TorchCPUBackend()]
    if torch.cuda.is_available():
        made += [cls() for cls in CUDA_BACKENDS if cls.buildable()]
    return made


__all__ = ["CUDA_BACKENDS", "TorchCPUBackend", "backends"]
