"""Hands backend × chapter processes to the GPUs of a host (``--gpus``) or to CPU slots (``--jobs``).

The run is cut into *units*, one per backend child and SPEC chapter, in matrix order (backends as listed,
chapters in the order pytest collects their test modules, so cases follow as in a run of one process per
backend). Each unit is one supervised pytest child (``run_backend``) writing
its own part file; a slot runs one unit at a time: a GPU slot sets ``CUDA_VISIBLE_DEVICES`` to its device,
so the child sees that GPU alone (``--jobs`` slots per GPU, default one), and every child's threads are
limited to its share of the cores. Units
go out longest first: by the durations a previous results file recorded for that backend and chapter, else
emulated backends first, then matrix order. When every unit is done the part files are appended to the
results file in matrix order, so the file is the same whatever the number of slots and whichever unit ended
first. The DIST chapter of a backend implementing it runs its own group of ranks over every GPU, so on GPUs
such a unit waits until no other unit runs and takes every GPU slot.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from conformance.records import CaseRecord, ConformanceRecord
from conformance.spec import AREAS, CLAUSES, MODULES
from conformance.supervisor import BackendRun

if TYPE_CHECKING:
    from conformance.probe import Listing

#: chapters whose cases start process groups over every GPU of the host, for backends with these operations
ALL_DEVICES_AREAS = {"DIST": "attention_context_parallel"}


@dataclass(frozen=True)
class Slot:
    """Where a unit runs: a label for the console and the environment its child gets on top of ours."""

    label: str
    env: dict[str, str]


@dataclass
class Unit:
    """One backend child on one chapter: its place in the matrix, what it runs, how long it is expected to take."""

    index: int
    selector: str
    factory: str
    names: tuple[str, ...]
    area: str
    #: the --clause values of the child: the chosen clauses of this chapter, else the chapter itself
    clauses: tuple[str, ...]
    emulated: bool = False
    #: its cases start process groups over every GPU (a DIST unit of a backend implementing the operation)
    all_devices: bool = False
    estimate_s: float = 0.0
    part: Path = Path()
    run: BackendRun | None = None
    error: BaseException | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{', '.join(self.names)} {self.area}"


def gpu_slots(spec: str, visible: int, per_gpu: int = 1) -> list[Slot]:
    """``--gpus all`` or ``--gpus N``: ``per_gpu`` slots per device (``--jobs``, default 1), each child seeing
    its device alone (``CUDA_VISIBLE_DEVICES``) and its share of the CPU cores (the float64 oracle runs there)."""
    count = visible if spec == "all" else int(spec)
    if not 1 <= count <= visible:
        raise ValueError(f"--gpus {spec}: this host has {visible} CUDA device(s)")
    threads = _threads(count * per_gpu)
    return [Slot(f"GPU {i}" + (f" job {j + 1}" if per_gpu > 1 else ""),
                 {"CUDA_VISIBLE_DEVICES": str(i), "OMP_NUM_THREADS": threads})
            for j in range(per_gpu) for i in range(count)]


def cpu_slots(jobs: int) -> list[Slot]:
    """``--jobs N``: N slots; each child's intra-op threads are the cores divided among the slots."""
    return [Slot(f"job {i + 1}", {"OMP_NUM_THREADS": _threads(jobs)}) for i in range(jobs)]


def _threads(slots: int) -> str:
    return str(max(1, (os.cpu_count() or 1) // slots))


def plan(runnable: dict[str, list[Listing]], chosen_clauses: list[str], previous: list[ConformanceRecord],
         parts_dir: Path) -> list[Unit]:
    """The units of a run in matrix order, each with its estimate and part file."""
    durations: dict[tuple[str, str], float] = defaultdict(float)
    for rec in previous:
        if isinstance(rec, CaseRecord) and rec.duration is not None:
            durations[(rec.backend, rec.area)] += rec.duration
    units = []
    for selector, entries in runnable.items():
        names = tuple(e.name for e in entries)
        for area in sorted(AREAS, key=MODULES.__getitem__):
            picked = tuple(c for c in chosen_clauses if c == area or (c in CLAUSES and CLAUSES[c].area == area))
            if chosen_clauses and not picked:
                continue
            index = len(units)
            units.append(Unit(index, selector, entries[0].factory, names, area, picked or (area,),
                              emulated=any((e.capabilities or {}).get("emulated") for e in entries),
                              all_devices=any(ALL_DEVICES_AREAS.get(area) in e.operations for e in entries),
                              estimate_s=sum(durations[(n, area)] for n in names),
                              part=parts_dir / f"part-{index:03d}.jsonl"))
    return units


def longest_first(units: list[Unit]) -> list[Unit]:
    """The order units are handed out: by estimate, emulated backends first where none is known."""
    return sorted(units, key=lambda u: (-u.estimate_s, not u.emulated, u.index))


class Placeable(Protocol):
    """What :func:`run_units` reads of a unit: whether its processes need every GPU of the host."""

    all_devices: bool


U = TypeVar("U", bound=Placeable)


def run_units(units: list[U], slots: list[Slot], execute: Callable[[U, Slot], object],
              stop: threading.Event) -> None:
    """Run every unit on the slots in the order given, one unit per slot at a time (a DIST unit on GPUs holds
    them all), until all are done or ``stop`` is set. ``execute`` runs one unit and returns when ``stop`` is
    set; its exception is kept on the unit (``unit.error``). A KeyboardInterrupt here sets ``stop``, waits for
    the units in flight and is re-raised."""
    pending = list(units)
    lock = threading.Condition()
    busy: set[int] = set()
    whole_running = [False]
    on_gpus = len({s.env.get("CUDA_VISIBLE_DEVICES") for s in slots} - {None}) > 1

    def take(slot_index: int) -> U | None:
        with lock:
            while pending and not stop.is_set():
                unit = next((u for u in pending if not whole_running[0]
                             and not (on_gpus and u.all_devices and busy)), None)
                if unit is not None:
                    pending.remove(unit)
                    busy.add(slot_index)
                    whole_running[0] = on_gpus and unit.all_devices
                    return unit
                lock.wait(timeout=1.0)
            return None

    def worker(slot_index: int) -> None:
        while (unit := take(slot_index)) is not None:
            whole = on_gpus and unit.all_devices
            slot = Slot(slots[slot_index].label, {}) if whole else slots[slot_index]
            try:
                execute(unit, slot)
            except BaseException as exc:  # noqa: BLE001 - kept on the unit and reported by the caller
                unit.error = exc  # type: ignore[attr-defined]
            with lock:
                busy.discard(slot_index)
                whole_running[0] = whole_running[0] and not whole
                lock.notify_all()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(slots))]
    for thread in threads:
        thread.start()
    # waiting by polling, not Thread.join: a join interrupted by the signal's KeyboardInterrupt leaves the
    # thread looking finished to a later join (CPython 3.11), and the units in flight would be abandoned
    try:
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop.set()
        while any(thread.is_alive() for thread in threads):
            time.sleep(0.2)
        raise


def merge_parts(units: list[Unit], results: Path) -> None:
    """Append every unit's part file to ``results`` in matrix order, then delete the parts."""
    with open(results, "ab") as out:
        for unit in sorted(units, key=lambda u: u.index):
            if unit.part.exists():
                data = unit.part.read_bytes()
                out.write(data if not data or data.endswith(b"\n") else data + b"\n")
                unit.part.unlink()
