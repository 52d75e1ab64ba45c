"""Float32 sum with a declared combine order: the pairwise tree (SPEC WD-1, WD-2).

Each program loads one aligned block of ``B`` (a power of two) inputs, padding past ``n`` with ``-0.0``,
the exact identity of IEEE addition (``x + -0.0 == x`` for every x, ``-0.0`` included). It then halves the
block ``log2(B)`` times: reshaping to ``[k, 2]`` and splitting the pairs adds exactly ``x[2i] + x[2i+1]``
(one addition per pair, so its order within the pair does not matter: float addition is commutative).
Round r therefore adds the partial sums at distance ``2^r``: the pairwise tree over the block. The block
sums go through the same kernel again (blocks of a power of two), until one value is left.

Because every stage uses aligned power-of-two blocks, the whole computation is exactly the pairwise tree
over all n inputs: round r adds ``slot[i + 2^r]`` into ``slot[i]`` for ``i % 2^(r+1) == 0`` and
``i + 2^r < n``, the rounds of stage 1 being r < log2(B), those of stage 2 the next ones, and so on (padded
slots only ever add ``-0.0``). :func:`pairwise_schedule` declares exactly that, so a float32 result is
bit-identical to ``schedule.evaluate(x)``: W = n - 1 additions, depth D = ceil(log2 n).
"""

from __future__ import annotations

import numpy as np
import torch

import triton
import triton.language as tl

from ..base import new_output
from ..schedule import Schedule
from .common import next_pow2

SCHEDULE_KIND = "pairwise tree"
#: the tree is unrolled log2(BLOCK) levels deep: Triton 3.6 compiles it for sm_90 in 0.4 s (1024), 2.7 s
#: (4096), 13 s (8192), far longer beyond (NOTES.md), so blocks stay at 4096
GPU_REDUCE_BLOCK = 4096
GPU_REDUCE_WARPS = 8
INTERPRETER_REDUCE_BLOCK = 1024


@triton.jit
def pairwise_block_sum_kernel(X, OUT, n, stride, BLOCK: tl.constexpr, LEVELS: tl.constexpr):
    """``OUT[pid]`` = pairwise-tree sum of ``X[pid*BLOCK : (pid+1)*BLOCK]`` (``BLOCK = 2**LEVELS``)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs * stride, mask=offs < n, other=-0.0)
    for level in tl.static_range(LEVELS):
        even, odd = tl.split(tl.reshape(x, (BLOCK >> (level + 1), 2)))
        x = even + odd
    tl.store(OUT + tl.program_id(0) + tl.arange(0, 1), x)


def pairwise_sum(x: torch.Tensor, block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """The pairwise-tree sum of a float32 ``[n]`` as a 0-dim tensor; ``block`` a power of two >= 2."""
    if block is None:
        block = INTERPRETER_REDUCE_BLOCK if x.device.type == "cpu" else GPU_REDUCE_BLOCK
    if num_warps is None:
        num_warps = 4 if x.device.type == "cpu" else GPU_REDUCE_WARPS
    values, n, stride = x, x.numel(), x.stride(0)
    while True:
        size = min(block, max(2, next_pow2(n)))
        programs = triton.cdiv(n, size)
        out = (new_output((), torch.float32, x.device) if programs == 1
               else torch.empty(programs, dtype=torch.float32, device=x.device))
        pairwise_block_sum_kernel[(programs,)](values, out, n, stride, BLOCK=size, LEVELS=size.bit_length() - 1,
                                               num_warps=num_warps)
        if programs == 1:
            return out
        values, n, stride = out, programs, 1


def pairwise_schedule(n: int) -> Schedule:
    """The schedule :func:`pairwise_sum` follows: round r adds ``slot[i + 2^r]`` into ``slot[i]``.

    Built with NumPy (about 3 * 8 * n bytes); equal to ``implementations.schedule.pairwise_tree(n)``.
    """
    rounds = []
    stride = 1
    while stride < n:
        dst = np.arange(0, n - stride, 2 * stride, dtype=np.int64)
        rounds.append((dst, dst.copy(), dst + stride))
        stride *= 2
    return Schedule(n, SCHEDULE_KIND, rounds, 0)
