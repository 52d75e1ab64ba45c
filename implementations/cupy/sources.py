"""The CUDA C++ sources of the cupy backend as NVRTC receives them (no CuPy needed to read them)."""

from __future__ import annotations

import re
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
#: a line that includes a header of this folder
_INCLUDE = re.compile(r'^#include "(\w+\.cuh)"$', re.MULTILINE)


def source(name: str) -> str:
    """The text of ``name.cu`` with each header it includes, directly or through another header, pasted in
    place of its first ``#include`` line and dropped at the others: NVRTC needs no include path, and CuPy's
    cache key covers the headers too."""
    pasted: set[str] = set()

    def paste(include: re.Match[str]) -> str:
        header = include.group(1)
        if header in pasted:
            return ""
        pasted.add(header)
        return _INCLUDE.sub(paste, (SOURCE_DIR / header).read_text())

    return _INCLUDE.sub(paste, (SOURCE_DIR / f"{name}.cu").read_text())
