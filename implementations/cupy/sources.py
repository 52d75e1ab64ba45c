"""The CUDA C++ sources of the cupy backend as NVRTC receives them (no CuPy needed to read them)."""

from __future__ import annotations

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
_INCLUDE = '#include "common.cuh"'


def source(name: str) -> str:
    """The text of ``name.cu`` with ``common.cuh`` pasted in (so CuPy's cache key covers the header too)."""
    text = (SOURCE_DIR / f"{name}.cu").read_text()
    return text.replace(_INCLUDE, (SOURCE_DIR / "common.cuh").read_text())
