"""``attnspec conformance --gpus all|N`` / ``--jobs N``: the run's backend × chapter units on their slots.

The units, slots, hand-out order and the merge of the part files are :mod:`conformance.dispatch`'s; this
module runs each unit under the supervisor (crash, timeout and interrupt handling as for one backend), says
on the console when each ends, and gives the run its exit status: the same as a run with one process per
backend would give on the same results.
"""

from __future__ import annotations

import os
import threading
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conformance.codec import read_records
from conformance.dispatch import Slot, Unit, cpu_slots, gpu_slots, longest_first, merge_parts, plan, run_units
from conformance.probe import Listing
from conformance.sharding import parse_shard
from conformance.supervisor import BackendRun, Outcome, RunProgress, run_backend


@dataclass(frozen=True)
class SpreadRun:
    """What the caller needs of a spread run: the per-backend pytest arguments and the console hooks."""

    results: Path
    #: pytest arguments every child gets (no --clause, no --factory: each unit adds its own)
    common: list[str]
    case_timeout: float
    #: called as each unit ends, with its label (``[i/n] backend AREA on GPU 0``) and its run
    on_done: Callable[[str, BackendRun], None]
    #: prints a problem on the console
    say: Callable[[str], None]


def option_problems(jobs: int, gpus: str | None, shard: str | None) -> list[str]:
    """What is wrong with ``--jobs``, ``--gpus`` and ``--shard``, each with its cause."""
    problems = [f"--jobs must be at least 1, got {jobs}"] if jobs < 1 else []
    if gpus is not None and not (gpus == "all" or (gpus.isdigit() and int(gpus) >= 1)):
        problems.append(f"--gpus must be 'all' or a number of GPUs >= 1, got {gpus!r}")
    elif gpus is not None and jobs >= 1:
        try:
            slots_for(gpus, jobs)
        except ValueError as exc:
            problems.append(str(exc))
    if shard is not None:
        try:
            parse_shard(shard)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def spread_conformance(spread: SpreadRun, runnable: dict[str, list[Listing]], args: Namespace,
                       previous: Path) -> tuple[bool, bool]:
    """The run on its slots (the options were checked by :func:`option_problems`): ``(bad, empty)`` as
    :func:`verdict` says."""
    units = run_spread(spread, runnable, args.clause, previous, slots_for(args.gpus, args.jobs))
    for unit in units:
        if unit.error is not None:
            spread.say(f"{unit.label}: the run failed: {unit.error!r}")
    return verdict(units, sharded=bool(args.shard))


def slots_for(gpus: str | None, jobs: int) -> list[Slot]:
    """``--gpus`` slots (``jobs`` per GPU) when given (ValueError when the host has fewer devices), else
    ``jobs`` CPU slots."""
    if gpus:
        import torch

        return gpu_slots(gpus, torch.cuda.device_count(), jobs)
    return cpu_slots(jobs)


def run_spread(spread: SpreadRun, runnable: dict[str, list[Listing]], clauses: list[str],
               previous_results: Path, slots: list[Slot]) -> list[Unit]:
    """Run every unit on ``slots`` and merge the parts into ``spread.results`` in matrix order; returns the
    units (each with its run, or the exception it met). KeyboardInterrupt is re-raised once the units in
    flight have recorded their case in flight as interrupted and the parts are merged."""
    parts_dir = spread.results.parent / "parts" / spread.results.stem
    parts_dir.mkdir(parents=True, exist_ok=True)
    for stale in parts_dir.glob("part-*.jsonl"):
        stale.unlink()
    units = plan(runnable, clauses, read_records(previous_results), parts_dir)
    stop = threading.Event()
    finished = [0]
    lock = threading.Lock()
    log_dir = spread.results.parent / "logs" / spread.results.stem

    def execute(unit: Unit, slot: Slot) -> None:
        def poll(progress: RunProgress) -> None:
            if stop.is_set():
                raise KeyboardInterrupt

        args = spread.common + [f"--clause={c}" for c in unit.clauses] + [f"--factory={unit.factory}"]
        unit.run = run_backend(unit.selector, unit.part, args, case_timeout=spread.case_timeout,
                               log_dir=log_dir / unit.area, on_poll=poll, env=os.environ | slot.env)
        with lock:
            finished[0] += 1
            spread.on_done(f"[{finished[0]}/{len(units)}] {unit.label} on {slot.label}", unit.run)

    try:
        run_units(longest_first(units), slots, execute, stop)
    finally:
        merge_parts(units, spread.results)
    return units


def verdict(units: list[Unit], sharded: bool) -> tuple[bool, bool]:
    """``(bad, empty)``: a unit had a bad case, did not finish or failed to run; a backend whose every unit
    ran no case (not counted for a shard, which may hold no case of a backend)."""
    bad = any(u.error is not None or u.run is None or u.run.progress.bad > 0
              or u.run.outcome is not Outcome.FINISHED for u in units)
    cases: dict[str, int] = {}
    for u in units:
        cases[u.selector] = cases.get(u.selector, 0) + (u.run.progress.cases if u.run else 0)
    empty = not sharded and any(n == 0 for n in cases.values())
    return bad, empty
