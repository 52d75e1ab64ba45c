"""``attnspec bench --gpus all|N`` / ``--jobs N``: one bench process per operation, spread over the slots.

The slots are conformance's (``conformance.dispatch``: one process per GPU at a time, ``--jobs`` per GPU, each
seeing its GPU alone; or ``--jobs`` CPU processes). Each operation's workloads run in a process of their own
(with every backend, so the speed-ups over the operation's baseline are computed as in one process), and
``--memory-scaling`` in one more; each writes a part file beside the output. The parts are then merged in the
order of the operations: the records one after the other, the memory sweep, every backend listed once, the
first part's provenance and ceilings (each process measures its device's; ``parts`` keeps each one's), and the
run is interrupted or unfinished when any part is. The exit status is the worst of the processes'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.dispatch import Slot, run_units
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


def merge(units: list[BenchUnit]) -> dict[str, Any]:
    """One bench document of the parts, in unit order (module docstring)."""
    docs = [json.loads(u.part.read_text()) for u in units if u.part.exists()]
    if not docs:
        return {"kind": "bench", "records": [], "memory_scaling": [], "interrupted": True, "finished": None}
    merged = dict(docs[0])
    merged["records"] = [r for d in docs for r in d.get("records", [])]
    merged["memory_scaling"] = [r for d in docs for r in d.get("memory_scaling", [])]
    merged["backends"] = list({b["name"]: b for d in docs for b in d.get("backends", [])}.values())
    merged["interrupted"] = any(d.get("interrupted") for d in docs) or len(docs) < len(units)
    merged["finished"] = None if merged["interrupted"] or not all(d.get("finished") for d in docs) else \
        max(d["finished"] for d in docs)
    merged["parts"] = [{"argv": d.get("argv"), "ceilings": d.get("ceilings")} for d in docs]
    return merged


def run(argv: list[str], args: Namespace, ops: list[str]) -> int:
    """Run the bench spread over the slots ``args.gpus`` / ``args.jobs`` name and write the merged file."""
    from benchmarks.bench import write_json

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
        write_json(args.output, merge(units))
        return 130
    write_json(args.output, merge(units))
    for unit in units:
        unit.part.unlink(missing_ok=True)
    codes = [u.code if u.code is not None else 1 for u in units]
    return 130 if 130 in codes else max(codes)
