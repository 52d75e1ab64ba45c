"""Hostile backends and factories: each ends, hangs or misleads the process it runs in, in one way.

They are float32 reductions with a declared pairwise tree (the WD chapter: ``--clause WD-0`` runs a few cases,
n = 1, 2, 7, 64, 100, ...) that misbehave on one input size only, so a run shows both the case that
misbehaved and that the others still ran. Plug them in with ``--backend tests.hostile:NAME``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable

import torch

from implementations.base import Backend, BackendUnavailable, Capabilities
from implementations.schedule import Schedule, pairwise_tree
from implementations.validate import rows_arg

#: the input size on which a hostile backend misbehaves (the third WD-0 case: some pass before it, some after)
TRIGGER_N = 7


class HostileSum(Backend):
    """A correct pairwise-tree reduction, except that ``act()`` runs on inputs of ``trigger`` elements (a tensor
    it returns replaces the sum)."""

    capabilities = Capabilities(devices=("cpu",), dtypes=(), reduce_dtypes=(torch.float32,),
                                reduce_schedule="pairwise tree")
    description = "a reduction that misbehaves on purpose"

    def __init__(self, name: str, act: Callable[[], object], trigger: int = TRIGGER_N) -> None:
        self.name = name
        self.act = act
        self.trigger = trigger

    def reduce_sum(self, x: torch.Tensor) -> tuple[torch.Tensor, Schedule]:
        rows_arg(self.capabilities, "reduce_sum", x)
        tree = pairwise_tree(x.numel())
        value = torch.tensor(tree.evaluate(x.numpy()))
        if x.numel() == self.trigger:
            replaced = self.act()
            if isinstance(replaced, torch.Tensor):
                value = replaced
        return value, tree


def _wrong_value() -> torch.Tensor:
    return torch.tensor(12345.0)


def _exits(code: int) -> Callable[[], HostileSum]:
    def factory() -> HostileSum:
        return HostileSum(f"exits-{code}", lambda: os._exit(code))
    return factory


def _hold_gil_forever() -> None:
    """A C call that never returns and keeps the GIL (PyDLL does not release it): no Python thread runs again."""
    ctypes.PyDLL(None).sleep(3600)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


exits_0, exits_1, exits_2, exits_3, exits_5 = (_exits(c) for c in (0, 1, 2, 3, 5))


def wrong() -> HostileSum:
    """Returns a wrong sum for n = 7: WD-0 fails there."""
    return HostileSum("wrong-sum", _wrong_value)


def raises_interrupt() -> HostileSum:
    """Raises KeyboardInterrupt for n = 7, with no signal: the case must fail and the run go on."""
    return HostileSum("raises-interrupt", _raise_interrupt)


def holds_gil() -> HostileSum:
    """Hangs in C holding the GIL for n = 7: the child's watchdog thread never runs."""
    return HostileSum("holds-gil", _hold_gil_forever)


def hangs_first() -> HostileSum:
    """Sleeps for an hour on the first WD-0 case (n = 1), so a run stays in flight."""
    return HostileSum("hangs-first", lambda: time.sleep(3600), trigger=1)


def markup_names() -> list[HostileSum]:
    """Names that rich would read as markup or emoji if they were printed as markup."""
    return [HostileSum("evil[/bold]name", lambda: None), HostileSum(":factory:", lambda: None)]


def unavailable_with_markup() -> Backend:
    """A factory whose reason holds what rich reads as markup and emoji, as a real install hint does."""
    raise BackendUnavailable("needs pip install 'attnspec[liger]' [bold]now[/bold] :smile:")


def factory_exits() -> Backend:
    """A factory that ends the interpreter through SystemExit."""
    sys.exit(7)


def factory_os_exit() -> Backend:
    """A factory that ends the process outright, no exception to catch."""
    os._exit(9)


def factory_segfaults() -> Backend:
    """A factory that segfaults, like a broken native extension at import."""
    ctypes.string_at(0)
    raise AssertionError("unreachable: reading address 0 kills the process")


def factory_hangs() -> Backend:
    """A factory that never returns."""
    time.sleep(3600)
    raise AssertionError("unreachable within a test's time")


#: the file a spawning backend or factory appends the pids of the processes it starts to (set by the test)
PIDS_FILE = "ATTNSPEC_TEST_PIDS"


def _spawn_sleeper() -> None:
    """Start a process that outlives this one unless its group is killed, and note its pid."""
    import subprocess

    sleeper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with open(os.environ[PIDS_FILE], "a", encoding="utf-8") as fh:
        fh.write(f"{sleeper.pid}\n")


def spawns_then_hangs() -> HostileSum:
    """Starts a child process, then sleeps for an hour, on the first WD-0 case (n = 1)."""
    return HostileSum("spawns-then-hangs", lambda: (_spawn_sleeper(), time.sleep(3600)), trigger=1)


def factory_spawns() -> HostileSum:
    """A factory that starts a child process and returns a correct backend."""
    _spawn_sleeper()
    return HostileSum("spawned", lambda: None)
