"""What the oracles of several operations share; backends never import it (a bug must not hide in both).

The oracle of an operation is its materialising definition evaluated in float64 on the CPU (torch autograd
for gradients); its naive form is the same definition run in dtype ``t`` on the backend's device, whose error
the tolerance rule scales (SPEC "Tolerance rule"). Each lives in its operation's module.
"""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype lse, softmax statistics, delta and the KD loss come in: float64 for float64, else float32.

    Written here rather than imported from ``implementations.base``, so the oracles share no code with
    backends."""
    return torch.float64 if dtype == torch.float64 else torch.float32
