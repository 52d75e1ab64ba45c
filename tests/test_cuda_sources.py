"""CI checks of the CuPy backend that need no GPU.

- Every ``.cu`` file of ``implementations/cupy`` compiles to an sm_90 cubin with the machine's ``nvcc`` (its
  representative template instantiations enabled by ``-DATTNSPEC_INSTANTIATE``), one nvcc call per file,
  the calls in parallel. Skipped, with the reason, only when nvcc is absent.
- Without a GPU the registry lists the backend as unavailable with a reason, and the factory raises
  ``BackendUnavailable`` instead of crashing.
- The reduction's declared schedule (``schedule_builder``) is a valid schedule of W = n - 1 additions, sums
  every input exactly once, and is bit-identical to a thread-by-thread NumPy emulation of
  ``reduce_sum.cu`` (the GPU test checks the kernel itself against the schedule).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from implementations.base import BackendUnavailable
from implementations.cupy.schedule_builder import grid_size, reduce_schedule
from implementations.registry import discover

SOURCES = Path(__file__).resolve().parents[1] / "implementations" / "cupy"
CU_FILES = sorted(SOURCES.glob("*.cu"))


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def test_sources_exist() -> None:
    names = {p.name for p in CU_FILES}
    assert {"attention_fwd.cu", "attention_bwd.cu", "softmax_stats.cu", "kd_loss.cu", "reduce_sum.cu",
            "decode_paged.cu"} <= names


def test_cu_files_compile_for_sm90(tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, CUDA_PATH, /usr/local/cuda): cannot compile the .cu files")
    procs = {
        cu.name: subprocess.Popen(
            [nvcc, "-arch=sm_90", "-lineinfo", "--std=c++17", "-DATTNSPEC_INSTANTIATE", "-Werror", "all-warnings",
             "--cubin", str(cu), "-o", str(tmp_path / f"{cu.stem}.cubin")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=SOURCES)
        for cu in CU_FILES
    }
    failures = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failures[name] = out[-3000:]
    assert not failures, "\n\n".join(f"{name}:\n{log}" for name, log in failures.items())


def test_python_sources_paste_each_header_once() -> None:
    from implementations.cupy.sources import source

    for cu in CU_FILES:
        text = source(cu.stem)
        includes = [line for line in text.splitlines() if line.lstrip().startswith("#include")]
        assert not includes, f"{cu.name}: {includes} left for NVRTC to resolve"
        assert "mma_16816" in text
        assert text.count("typedef unsigned short u16;") == 1, f"{cu.name}: common.cuh pasted more than once"
    assert "key_blocks" in source("attention_fwd")  # attention.cuh, which includes common.cuh itself


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the backend is available here")
def test_backend_unavailable_without_gpu() -> None:
    from implementations.cupy import backends

    with pytest.raises(BackendUnavailable, match="no CUDA device|cupy is not installed"):
        backends()
    entries = [e for e in discover() if e.origin == "built-in" and e.name == "cupy"]
    assert len(entries) == 1
    assert not entries[0].available
    assert entries[0].unavailable and ("no CUDA device" in entries[0].unavailable
                                       or "cupy is not installed" in entries[0].unavailable)


# --------------------------------------------------------------------------------------------------
# The reduction's schedule against an emulation of the kernel, thread by thread.

def _emulate_launch(x: np.ndarray, ctas: int, threads: int) -> np.ndarray:
    """What ``reduce_sum_f32<threads>`` computes with ``ctas`` CTAs over float32 ``x``: the CTAs' sums."""
    m = len(x)
    P = ctas * threads
    nvalid = min(m, P)
    acc = np.zeros(P, dtype=np.float32)
    acc[:nvalid] = x[:nvalid]
    k = 1
    while k * P < m:  # thread p adds x[p + kP], k = 1, 2, ...
        idx = np.arange(min(P, m - k * P))
        acc[idx] = acc[idx] + x[idx + k * P]
        k += 1
    p = np.arange(P)
    lane = p % 32
    with np.errstate(over="ignore", invalid="ignore"):
        for o in (16, 8, 4, 2, 1):  # __shfl_down_sync: lanes past the warp's end read their own value
            other = np.where(lane + o < 32, acc[np.minimum(p + o, P - 1)], acc)
            acc = np.where((lane < o) & (p + o < nvalid), acc + other, acc).astype(np.float32)
        nw = threads // 32
        v = acc.reshape(ctas, nw, 32)[:, :, 0].copy()  # lane 0 of each warp -> shared memory
        w = np.arange(nw)[None, :]
        base = (np.arange(ctas) * threads)[:, None]
        o = nw // 2
        while o >= 1:
            other = np.where(w + o < nw, v[:, np.minimum(np.arange(nw) + o, nw - 1)], v)
            v = np.where((w < o) & (base + 32 * (w + o) < nvalid), v + other, v).astype(np.float32)
            o //= 2
    return v[:, 0]


def _emulate(x: np.ndarray, ctas: int, threads: int) -> np.float32:
    partial = _emulate_launch(x, ctas, threads)
    return _emulate_launch(partial, 1, threads)[0] if ctas > 1 else partial[0]


@pytest.mark.parametrize("n", [1, 2, 31, 33, 512, 513, 4097, 100_003, 300_000])
@pytest.mark.parametrize("threads, sms", [(512, 132), (64, 3)])
def test_reduce_schedule_matches_kernel_emulation(n: int, threads: int, sms: int) -> None:
    ctas = grid_size(n, threads, sms)
    sched = reduce_schedule(n, ctas, threads)
    sched.validate()
    assert sched.work == n - 1
    exact = np.arange(1, n + 1, dtype=np.float64)  # integers: a float64 sum of each input once is exact
    assert float(sched.evaluate(exact, np.float64)) == n * (n + 1) / 2
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    assert sched.evaluate(x).view(np.uint32) == np.float32(_emulate(x, ctas, threads)).view(np.uint32)


def test_reduce_schedule_depth_of_a_single_cta() -> None:
    # 64 inputs, one CTA of 64 threads: warp trees (5 levels) then the 2-warp CTA tree (1 level) = log2 64.
    sched = reduce_schedule(64, 1, 64)
    assert (sched.work, sched.depth) == (63, 6)
