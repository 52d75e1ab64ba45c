"""``attnspec bench --gpus all|N`` / ``--jobs N``: one bench process per operation, spread over the slots.

The slots are conformance's (``conformance.dispatch``: one process per GPU at a time, ``--jobs`` per GPU, each
seeing its GPU alone; or ``--jobs`` CPU processes). Each operation's workloads run in a process of their own
(with every backend, so the speed-ups over the operation's baseline are computed as in one process), and
``--memory-scaling`` in one more; each writes a part file beside the output. The parts are then merged in the
order of the operations: the records one after the other, the memory sweep, every backend listed once and in
the order one process lists them (a probe child lists the registry; no backend is made in this process), the
first part's provenance and ceilings (each process measures its device's; ``parts`` keeps each one's), and the
run is interrupted or unfinished when any part is. The exit status is the worst of the processes'.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from argparse import Namespace
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.bench import listing_order
from conformance.codec import read_bench, write_bench
from conformance.dispatch import Slot, run_units
from conformance.probe import DiscoveryError
from conformance.records import BenchPart, BenchRun
from conformance.spread import slots_for

#: bench options that take a value and that each process gets its own of
OWN_VALUED = ("--op", "--output", "--gpus", "--jobs")


@dataclass
class BenchUnit:
    """One bench process: its place in the merge, its arguments, its part file and exit status."""

    index: int
    argv: list[str]
    part: Path
    all_devices: bool = False
    code: int | None = None
    error: BaseException | None = None


def shared_argv(argv: list[str]) -> list[str]:
    """``argv`` without the options each process gets its own of (``--op``, ``--output``, ``--gpus``,
    ``--jobs``, ``--memory-scaling``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in OWN_VALUED:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in OWN_VALUED)) and arg != "--memory-scaling":
            kept.append(arg)
    return kept


def plan(argv: list[str], args: Namespace, ops: list[str]) -> list[BenchUnit]:
    """A unit per operation, and one for the memory sweep when asked for."""
    common = shared_argv(argv)
    parts = args.output.with_name(f"{args.output.stem}-parts")
    units = [BenchUnit(i, common + ["--op", op], parts / f"{i:02d}-{op}.json") for i, op in enumerate(ops)]
    if args.memory_scaling:
        same_ops = [a for op in ops for a in ("--op", op)]  # the backends of the sweep are chosen by them
        units.append(BenchUnit(len(units), common + same_ops + ["--memory-scaling", "--no-timing"],
                               parts / f"{len(units):02d}-memory.json"))
    return units


def merge(units: list[BenchUnit]) -> BenchRun:
    """One bench run of the parts, in unit order (module docstring)."""
    runs = [read_bench(u.part, []) for u in units if u.part.exists()]
    if not runs:
        return BenchRun(interrupted=True)
    interrupted = any(r.interrupted for r in runs) or len(runs) < len(units)
    finished = None if interrupted or not all(r.finished for r in runs) else max(r.finished for r in runs)
    return replace(runs[0], records=[x for r in runs for x in r.records],
                   memory_scaling=[m for r in runs for m in r.memory_scaling],
                   backends=list({b.name: b for r in runs for b in r.backends}.values()),
                   interrupted=interrupted, finished=finished,
                   parts=[BenchPart(argv=r.argv, ceilings=r.ceilings) for r in runs])


def in_listing_order(run: BenchRun, order: list[str]) -> BenchRun:
    """``run`` with its backends in ``order`` (one process's listing); a backend ``order`` does not name stays
    after those it does, in its place."""
    rank = {name: i for i, name in enumerate(order)}
    return replace(run, backends=sorted(run.backends, key=lambda b: rank.get(b.name, len(rank))))


def merged_in_listing_order(units: list[BenchUnit], names: list[str], ops: list[str]) -> BenchRun:
    """The merged run, its backends in one process's listing order (left in the parts' order where the registry
    cannot be listed: the parts have run and their records are kept either way)."""
    merged = merge(units)
    if merged.device is None:
        return merged
    try:
        return in_listing_order(merged, listing_order(names, ops, merged.device))
    except (DiscoveryError, ValueError):
        return merged


def run(argv: list[str], args: Namespace, ops: list[str]) -> int:
    """Run the bench spread over the slots ``args.gpus`` / ``args.jobs`` name and write the merged file."""
    try:
        slots = slots_for(args.gpus, args.jobs)
    except ValueError as exc:
        print(f"attnspec bench: {exc}", file=sys.stderr)
        return 2
    units = plan(argv, args, ops)
    units[0].part.parent.mkdir(parents=True, exist_ok=True)

    def execute(unit: BenchUnit, slot: Slot) -> None:
        cmd = [sys.executable, "-m", "benchmarks.bench", *unit.argv, "--output", str(unit.part)]
        unit.code = subprocess.run(cmd, env=os.environ | slot.env).returncode

    stop = threading.Event()
    try:
        run_units(units, slots, execute, stop)
    except KeyboardInterrupt:
        write_bench(args.output, merge(units))
        return 130
    write_bench(args.output, merged_in_listing_order(units, args.backend, ops))
    for unit in units:
        unit.part.unlink(missing_ok=True)
    codes = [u.code if u.code is not None else 1 for u in units]
    return 130 if 130 in codes else max(codes)
