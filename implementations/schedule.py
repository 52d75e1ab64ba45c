"""Combine schedules of reductions (SPEC WD-0..WD-3).

A schedule over ``n`` inputs is a list of rounds. Slots ``0..n-1`` start as the inputs; each operation
``(dst, a, b)`` sets ``slot[dst] = slot[a] + slot[b]``; operations within one round are independent (no
operation reads a slot another operation of the same round writes). The result is ``slot[result]``.

From a schedule the harness computes work ``W`` (number of additions) and depth ``D`` (longest chain of
dependent additions), evaluates it in float32 (WD-2: a kernel that follows its schedule is bit-identical to
this evaluation) and simulates a greedy ``p``-processor execution for Brent's bound (WD-3).

Float addition is commutative, so ``a + b`` and ``b + a`` are the same operation; it is not associative,
which is why the order of the rounds matters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Round = tuple[np.ndarray, np.ndarray, np.ndarray]  # dst, a, b (int64 arrays of equal length)


def _work(rounds: list[Round]) -> int:
    return int(sum(len(dst) for dst, _, _ in rounds))


def _depths(n: int, rounds: list[Round]) -> np.ndarray:
    """Each slot's longest chain of dependent additions (inputs 0); every round gathers before it scatters."""
    depth = np.zeros(n, dtype=np.int64)
    for dst, a, b in rounds:
        depth[dst] = np.maximum(depth[a], depth[b]) + 1
    return depth


def _replay(n: int, rounds: list[Round], x: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """All slots after running ``rounds`` on ``x`` in ``dtype``, round by round, in the declared order."""
    slots = np.asarray(x, dtype=dtype).reshape(-1).copy()
    if slots.size != n:
        raise ValueError(f"schedule is for n={n} inputs, got {slots.size}")
    for dst, a, b in rounds:
        slots[dst] = slots[a] + slots[b]
    return slots


@dataclass
class Schedule:
    """An explicit combine schedule: ``rounds`` of ``(dst, a, b)`` additions, result in ``slot[result]``."""

    n: int
    kind: str
    rounds: list[Round] = field(default_factory=list)
    result: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"a schedule needs at least one input, got n={self.n}")

    # -- measures --------------------------------------------------------------------------------

    @property
    def work(self) -> int:
        """W: the number of additions executed."""
        return _work(self.rounds)

    @property
    def depth(self) -> int:
        """D: the longest chain of dependent additions ending in the result (inputs have depth 0)."""
        return int(_depths(self.n, self.rounds)[self.result])

    def validate(self) -> None:
        """Raise ValueError if slots are out of range or an operation reads what its round writes."""
        for r, (dst, a, b) in enumerate(self.rounds):
            if not (len(dst) == len(a) == len(b)):
                raise ValueError(f"round {r}: dst, a, b lengths differ")
            for name, idx in (("dst", dst), ("a", a), ("b", b)):
                if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
                    raise ValueError(f"round {r}: {name} slot out of range 0..{self.n - 1}")
            if len(np.unique(dst)) != len(dst):
                raise ValueError(f"round {r}: a slot is written twice")
            written = set(dst.tolist())
            for d, x, y in zip(dst.tolist(), a.tolist(), b.tolist()):
                for src in (x, y):  # an operation may read the slot it overwrites, not another's
                    if src in written and src != d:
                        raise ValueError(f"round {r}: slot {src} is read and written in the same round")

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, x: np.ndarray, dtype: np.dtype | type = np.float32) -> np.generic:
        """Run the schedule on ``x`` in ``dtype``, round by round, in exactly the declared order."""
        return _replay(self.n, self.rounds, x, dtype)[self.result]

    def greedy_time(self, p: int) -> int:
        """Steps of a greedy ``p``-processor execution of the additions' dependency graph (WD-3).

        Each step runs up to ``p`` additions whose operands are computed, oldest first; an addition
        depends on the latest earlier writes of the two slots it reads.
        """
        if p < 1:
            raise ValueError(f"p must be >= 1, got {p}")
        ops = [(int(d), int(x), int(y)) for dst, a, b in self.rounds for d, x, y in zip(dst, a, b)]
        children: list[list[int]] = [[] for _ in ops]
        indegree = [0] * len(ops)
        last_writer: dict[int, int] = {}
        for i, (d, x, y) in enumerate(ops):
            for parent in {last_writer.get(x), last_writer.get(y)} - {None}:
                children[parent].append(i)
                indegree[i] += 1
            last_writer[d] = i
        ready = deque(i for i in range(len(ops)) if indegree[i] == 0)
        steps = 0
        while ready:
            steps += 1
            batch = [ready.popleft() for _ in range(min(p, len(ready)))]
            for i in batch:
                for c in children[i]:
                    indegree[c] -= 1
                    if indegree[c] == 0:
                        ready.append(c)
        return steps


def _round(pairs: list[tuple[int, int]]) -> Round:
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 0].copy(), arr[:, 1].copy()


def sequential(n: int) -> Schedule:
    """Left to right: ``((x0 + x1) + x2) + ...``; W = D = n - 1."""
    return Schedule(n, "sequential", [_round([(0, i)]) for i in range(1, n)], 0)


def pairwise_tree(n: int) -> Schedule:
    """Neighbours first, stride doubling: round r adds ``slot[i + 2^r]`` into ``slot[i]`` for i % 2^(r+1) == 0.

    W = n - 1, D = ceil(log2 n) (WD-1).
    """
    rounds, stride = [], 1
    while stride < n:
        rounds.append(_round([(i, i + stride) for i in range(0, n - stride, 2 * stride)]))
        stride *= 2
    return Schedule(n, "pairwise tree", rounds, 0)


def halving_tree(n: int) -> Schedule:
    """Top half folded onto the bottom half each round (warp ``shfl_down`` / shared-memory style).

    With ``h = ceil(m/2)`` of the ``m`` live slots: ``slot[i] += slot[i + h]`` for ``i + h < m``.
    W = n - 1, D = ceil(log2 n).
    """
    rounds, m = [], n
    while m > 1:
        h = (m + 1) // 2
        rounds.append(_round([(i, i + h) for i in range(m - h)]))
        m = h
    return Schedule(n, "halving tree", rounds, 0)


def blocked(n: int, p: int, tree: str = "pairwise") -> Schedule:
    """Each of ``p`` workers sums a contiguous block of ``ceil(n/p)`` sequentially, then a tree (WD-3).

    W = n - 1, D = ceil(n/p) - 1 + ceil(log2 p') where p' is the number of non-empty blocks.
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    size = -(-n // p)
    starts = list(range(0, n, size))
    rounds = [_round([(s, s + j) for s in starts if s + j < min(s + size, n)]) for j in range(1, size)]
    rounds = [r for r in rounds if len(r[0])]
    inner = {"pairwise": pairwise_tree, "halving": halving_tree}[tree](len(starts))
    for dst, a, b in inner.rounds:  # re-index the tree over block leaders
        lead = np.asarray(starts, dtype=np.int64)
        rounds.append((lead[dst], lead[a], lead[b]))
    return Schedule(n, f"blocked p={p} + {tree} tree", rounds, 0)


class DeferredSchedule(Schedule):
    """The :class:`Schedule` ``build()`` returns, built on first use (``n`` is known at once).

    Building the rounds of a large reduction in NumPy takes far longer than the kernel (2^28 inputs: minutes
    and ~6 GB); benchmarks time ``reduce_sum`` calls and never look at the schedule, the conformance suite
    does.
    """

    def __init__(self, n: int, build: Callable[[], Schedule]) -> None:
        self.n = n
        self._build: Callable[[], Schedule] | None = build
        self._built: Schedule | None = None
        self.__post_init__()

    def _schedule(self) -> Schedule:
        if self._built is None:
            assert self._build is not None
            built, self._build = self._build(), None
            if built.n != self.n:
                raise ValueError(f"deferred schedule over {self.n} inputs built one over {built.n}")
            self._built = built
        return self._built

    @property  # type: ignore[override]
    def kind(self) -> str:
        return self._schedule().kind

    @property  # type: ignore[override]
    def rounds(self) -> list[Round]:
        return self._schedule().rounds

    @property  # type: ignore[override]
    def result(self) -> int:
        return self._schedule().result


@dataclass
class ScanSchedule:
    """An inclusive prefix sum as rounds of parallel steps (SPEC WD-5).

    Slots start as the inputs and end as the prefix sums. In each round every addition
    ``slot[dst] = slot[a] + slot[b]`` reads the values the slots held before the round (a parallel step,
    double-buffered), so a round may read a slot another of its additions writes.
    """

    n: int
    kind: str
    rounds: list[Round] = field(default_factory=list)

    @property
    def work(self) -> int:
        """W: the number of additions."""
        return _work(self.rounds)

    @property
    def depth(self) -> int:
        """D: the longest chain of dependent additions behind any output."""
        return int(_depths(self.n, self.rounds).max()) if self.n else 0

    def evaluate(self, x: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """All n prefix sums of ``x`` in ``dtype``, round by round in the declared order."""
        return _replay(self.n, self.rounds, x, dtype)


def sequential_scan(n: int) -> ScanSchedule:
    """``y[i] = y[i-1] + x[i]``: W = D = n - 1."""
    return ScanSchedule(n, "sequential", [_round([(i, i - 1)]) for i in range(1, n)])


def hillis_steele_scan(n: int) -> ScanSchedule:
    """Round d adds ``slot[i - 2^d]`` into ``slot[i]`` for every ``i >= 2^d`` at once.

    For n a power of two: W = n·log2 n - (n - 1), D = log2 n (SPEC WD-5).
    """
    rounds, offset = [], 1
    while offset < n:
        rounds.append(_round([(i, i - offset) for i in range(offset, n)]))
        offset *= 2
    return ScanSchedule(n, "hillis-steele", rounds)
