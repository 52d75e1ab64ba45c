"""The combine schedule that ``reduce_sum.cu`` follows, as an :class:`implementations.schedule.Schedule`.

One launch of ``ctas`` CTAs of ``threads`` threads over ``m`` values held in ``slots`` (P = ctas * threads
threads, ``nvalid = min(m, P)`` of them hold a value):

1. thread p < nvalid: ``slot[p] += slot[p + k P]`` for k = 1, 2, ... while p + k P < m (one round per k);
2. warp tree, for o = 16, 8, 4, 2, 1: lanes l < o with p + o < nvalid: ``slot[p] += slot[p + o]``;
3. CTA tree over the warp leaders (thread 32 w of each CTA), for o = threads/64, ..., 1: warps w < o whose
   partner's first thread g*threads + 32 (w + o) < nvalid: ``slot[lead(w)] += slot[lead(w + o)]``;
4. CTA g's sum sits in the slot of its thread 0.

``reduce_schedule`` chains the launches the backend makes: one over the n inputs, then (when there is more
than one CTA) one CTA over the CTAs' sums. Every value but the result's enters exactly one addition as its
right operand, so W = n - 1; the depth is the sequential run, ceil(n / P) - 1, plus the trees' levels.
"""

from __future__ import annotations

import numpy as np

from implementations.schedule import Round, Schedule

WARP = 32


def _round(slots: np.ndarray, dst: np.ndarray, src: np.ndarray) -> Round:
    return slots[dst], slots[dst], slots[src]


def launch_rounds(slots: np.ndarray, ctas: int, threads: int) -> tuple[list[Round], np.ndarray]:
    """The rounds of one ``reduce_sum_f32`` launch over the values in ``slots``; returns them and the
    slots holding each CTA's sum."""
    if threads % WARP or threads & (threads - 1) or threads > 1024:
        raise ValueError(f"threads must be a power of two multiple of 32 up to 1024, got {threads}")
    m = len(slots)
    P = ctas * threads
    nvalid = min(m, P)
    if ctas < 1 or (ctas - 1) * threads >= m:
        raise ValueError(f"{ctas} CTAs of {threads} threads leave a CTA without input for m={m}")
    rounds: list[Round] = []
    for k in range(1, -(-m // P)):  # 1. sequential, strided by P
        p = np.arange(min(P, m - k * P))
        rounds.append(_round(slots, p, p + k * P))
    p = np.arange(nvalid)
    lane = p % WARP
    o = WARP // 2
    while o >= 1:  # 2. warp tree
        sel = (lane < o) & (p + o < nvalid)
        rounds.append(_round(slots, p[sel], p[sel] + o))
        o //= 2
    o = threads // WARP // 2
    while o >= 1:  # 3. CTA tree over warp leaders
        lead = (np.arange(ctas)[:, None] * threads + WARP * np.arange(o)[None, :]).ravel()
        partner = lead + WARP * o
        sel = partner < nvalid
        rounds.append(_round(slots, lead[sel], partner[sel]))
        o //= 2
    return [r for r in rounds if len(r[0])], slots[np.arange(ctas) * threads]


def reduce_schedule(n: int, ctas: int, threads: int) -> Schedule:
    """The schedule of the backend's reduction over ``n`` inputs: a launch of ``ctas`` CTAs, then one CTA
    over their sums when ``ctas > 1``."""
    if ctas > threads:
        raise ValueError(f"the second launch has one CTA of {threads} threads, so ctas <= {threads}")
    rounds, partial = launch_rounds(np.arange(n, dtype=np.int64), ctas, threads)
    if ctas > 1:
        more, partial = launch_rounds(partial, 1, threads)
        rounds += more
    return Schedule(n, f"strided sequential over {ctas}x{threads} threads + shfl_down warp tree + CTA tree"
                    + (", then one CTA over the partial sums" if ctas > 1 else ""), rounds, int(partial[0]))


def grid_size(n: int, threads: int, sm_count: int) -> int:
    """CTAs of the first launch: two per multiprocessor (full occupancy at 512 threads), never more than
    the second launch's threads, and none without input."""
    return max(1, min(-(-n // threads), 2 * sm_count, threads))
