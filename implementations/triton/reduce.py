"""Float32 sum with a declared combine order (SPEC WD-1, WD-2): strided lanes, then a pairwise tree.

One launch covers ``m`` values with programs of ``ROWS x LANES`` consecutive values (a power-of-two number
of lanes). Lane ``j`` of program ``p`` starts from value ``p·ROWS·LANES + j`` and adds the values
``LANES, 2·LANES, ...`` further on in order, one vector addition per row (a plain elementwise ``+``, so each
lane's order is exactly the rows' order); then the ``LANES`` lane sums go through a pairwise tree
(reshaping to ``[k, 2]`` and splitting the pairs adds exactly ``lane[2i] + lane[2i+1]``, level after level).
Program sums go through the same kernel again until one value is left. Values past ``m`` are loaded as
``-0.0``, the exact identity of IEEE addition (``x + -0.0 == x`` for every x, ``-0.0`` included), so they
change nothing and the schedule leaves them out.

This is a blocked schedule in the sense of WD-3 with strided blocks (the lanes are the workers): the rows
stream through registers at the memory's speed and the tree, the part that needs data movement between
threads, runs once per ``ROWS·LANES`` values. :func:`strided_schedule` builds exactly these rounds with
NumPy, so a float32 result is bit-identical to ``schedule.evaluate(x)``: W = n - 1; for ``n <= LANES`` the
schedule is the pairwise tree (D = ceil(log2 n)), beyond it D = ROWS - 1 + log2(LANES) per launch.
"""

from __future__ import annotations

import numpy as np
import torch

import triton
import triton.language as tl

from ..base import new_output
from ..schedule import DeferredSchedule, Round, Schedule

SCHEDULE_KIND = "blocked: strided lanes summed row by row, then a pairwise tree over the lanes, per launch"
#: (rows, lanes, warps) per launch: the GPU's stream 64 rows of 1024 lanes per program (the tree is unrolled
#: log2(lanes) levels; Triton 3.6 compiles a 1024-lane tree for sm_90 in under a second); the interpreter's
#: are small so CPU tests cover several programs and launches
GPU_REDUCE = (64, 1024, 4)
INTERPRETER_REDUCE = (4, 256, 4)


@triton.jit
def strided_block_sum_kernel(X, OUT, n, stride, ROWS: tl.constexpr, LANES: tl.constexpr, LEVELS: tl.constexpr):
    """``OUT[pid]`` = the sum of ``X[pid·ROWS·LANES :][: ROWS·LANES]``: rows into lanes, then a pairwise tree."""
    base = tl.program_id(0).to(tl.int64) * (ROWS * LANES)
    offs = base + tl.arange(0, LANES)
    acc = tl.load(X + offs * stride, mask=offs < n, other=-0.0)
    for r in tl.range(1, ROWS):
        row = offs + r * LANES
        acc += tl.load(X + row * stride, mask=row < n, other=-0.0)
    for level in tl.static_range(LEVELS):
        even, odd = tl.split(tl.reshape(acc, (LANES >> (level + 1), 2)))
        acc = even + odd
    tl.store(OUT + tl.program_id(0) + tl.arange(0, 1), acc)


def _config(device: torch.device, rows: int | None, lanes: int | None, num_warps: int | None) -> tuple[int, int, int]:
    default = INTERPRETER_REDUCE if device.type == "cpu" else GPU_REDUCE
    rows, lanes, num_warps = rows or default[0], lanes or default[1], num_warps or default[2]
    if rows < 1 or lanes < 2 or lanes & (lanes - 1):
        raise ValueError(f"rows must be >= 1 and lanes a power of two >= 2, got rows={rows}, lanes={lanes}")
    return rows, lanes, num_warps


def strided_sum(x: torch.Tensor, rows: int | None = None, lanes: int | None = None,
                num_warps: int | None = None) -> torch.Tensor:
    """The sum of a float32 ``[n]`` in the order of :func:`strided_schedule`, as a 0-dim tensor."""
    rows, lanes, num_warps = _config(x.device, rows, lanes, num_warps)
    values, n, stride = x, x.numel(), x.stride(0)
    while True:
        programs = triton.cdiv(n, rows * lanes)
        out = (new_output((), torch.float32, x.device) if programs == 1
               else torch.empty(programs, dtype=torch.float32, device=x.device))
        strided_block_sum_kernel[(programs,)](values, out, n, stride, ROWS=rows, LANES=lanes,
                                              LEVELS=lanes.bit_length() - 1, num_warps=num_warps)
        if programs == 1:
            return out
        values, n, stride = out, programs, 1


def _launch_rounds(m: int, rows: int, lanes: int) -> list[Round]:
    """One launch's rounds over values ``0..m-1`` (indices of that launch's inputs)."""
    starts = np.arange(0, m, rows * lanes, dtype=np.int64)
    lane = (starts[:, None] + np.arange(lanes, dtype=np.int64)[None, :]).ravel()
    rounds = []
    for r in range(1, rows):
        src = lane + r * lanes
        keep = src < m
        if keep.any():
            rounds.append((lane[keep], lane[keep], src[keep]))
    step = 1
    while step < lanes:
        dst = (starts[:, None] + np.arange(0, lanes - step, 2 * step, dtype=np.int64)[None, :]).ravel()
        keep = dst + step < m
        if keep.any():
            rounds.append((dst[keep], dst[keep], dst[keep] + step))
        step *= 2
    return rounds


def strided_schedule(n: int, rows: int, lanes: int) -> Schedule:
    """The schedule :func:`strided_sum` follows for ``n`` inputs (launches chained: launch k's value i is
    the slot of program i's first input in launch k - 1). Built with NumPy, about 3 · 8 · n bytes."""
    rounds: list[Round] = []
    m, scale = n, 1
    while True:
        rounds += [(dst * scale, a * scale, b * scale) for dst, a, b in _launch_rounds(m, rows, lanes)]
        programs = -(-m // (rows * lanes))
        if programs == 1:
            return Schedule(n, SCHEDULE_KIND, rounds, 0)
        m, scale = programs, scale * rows * lanes


def sum_with_schedule(x: torch.Tensor) -> tuple[torch.Tensor, Schedule]:
    """The backend's reduction: :func:`strided_sum` with the device's config and the schedule it followed
    (built when first used: benchmarks time the kernel, not NumPy)."""
    rows, lanes, _ = _config(x.device, None, None, None)
    n = x.numel()
    return strided_sum(x), DeferredSchedule(n, lambda: strided_schedule(n, rows, lanes))
