"""A backend factory (``tests.xformers_without_kernels:factory``) that runs the real ``xformers`` factory as
if on a CUDA machine whose xFormers wheel cannot load its kernels: xFormers 0.0.35 "installed", a CUDA
device "present", ``import xformers`` resolving to tests/stubs/xformers, and the probe's tensor made on the CPU
(this machine has no CUDA)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import torch

from implementations import xformers_fmha

STUBS = Path(__file__).parent / "stubs"


def factory() -> object:
    real_version = importlib.metadata.version
    importlib.metadata.version = lambda name: "0.0.35" if name == "xformers" else real_version(name)
    torch.cuda.is_available = lambda: True
    xformers_fmha.probe_input = lambda: torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16)
    sys.path.insert(0, str(STUBS))
    return xformers_fmha.backends()
