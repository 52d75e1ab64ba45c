"""``attnspec bench``: gate, time and measure every selected backend on the workload table.

``attnspec bench [--backend NAME ...] [--op OP ...] [-k TEXT ...] [--quick] [--output PATH] [--memory-scaling]
[--gpus all|N] [--jobs N]``
(also ``python -m benchmarks.bench ...``). For each operation, workload (benchmarks/workloads.py) and
backend: the correctness gate (benchmarks/gate.py) runs first; a backend that fails it, errs, or declares the
case unsupported is not timed and the record says why. A passing one is timed (benchmarks/timing.py) and its
peak extra memory measured (``conformance.memory.peak_extra``). Figures per record: median and IQR seconds,
TFLOP/s (attention) or GB/s over the minimal bytes (KD, softmax statistics, reduction), the fraction of the
ceiling measured at the start of the run, and the speed-up over the operation's baseline (``BenchOp.baselines``,
read by benchmarks/baselines.py); on CUDA, speed-ups above 10x over a vendor library and figures above the
measured ceiling are flagged ``suspicious``.

``-k TEXT`` keeps the workloads whose label (e.g. ``B32H32-S512-D64-causal``) contains TEXT, ignoring case, and
``-k "not TEXT"`` those whose label does not; several ``-k`` must all hold (they are ANDed). A selection that
keeps no workload is refused (exit 2) with a few of the labels there are.

``--memory-scaling`` adds the peak extra memory of attention forward and backward against S per backend,
with the fitted log-log slope (about 1 for linear memory, 2 for a materialised score matrix).

The JSON file (default ``results/bench.json``, format in docs/benchmarks.md) is rewritten after every record,
so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.baselines import SUSPICIOUS_SPEEDUP, baseline_backends, baseline_of, is_vendor, reference_rows_of
from benchmarks.gate import ReferenceCache, run_gate
from benchmarks.timing import measure_ceilings, timing_for
from benchmarks.workloads import (
    OPS,
    LabelPattern,
    Workload,
    bind,
    make_inputs,
    matching,
    memory_workloads,
    not_supported,
    rates,
    timed_call,
    unmatched,
    workloads,
)
from conformance.cases import seed_for
from conformance.codec import write_bench
from conformance.console import text_console
from conformance.interrupts import interruptible
from conformance.memory import loglog_slope, peak_extra
from conformance.probe import DiscoveryError, Listing, discover_isolated
from conformance.provenance import collect, now
from conformance.records import BackendListing, BenchRecord, BenchRun, Ceilings, MemoryRecord
from conformance.results import Status
from implementations.base import BackendLike, dtype_name
from implementations.ops import BENCH_OPS
from implementations.registry import RegistryEntry, SelectableT, discover, select

DEFAULT_OUTPUT = Path("results/bench.json")
MEMORY_OPS = ("attention", "attention_backward")
BASELINE_ORIGIN = "attnspec bench baseline"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="attnspec bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="backend name or package.module:factory (repeatable; default: all available)")
    parser.add_argument("--op", action="append", default=[], choices=OPS,
                        help="operation to benchmark (repeatable; default: all)")
    parser.add_argument("-k", action="append", default=[], type=label_pattern, metavar="TEXT", dest="patterns",
                        help='keep workloads whose label contains TEXT (ignoring case; "not TEXT": does not '
                             "contain it); repeatable, every -k must hold")
    parser.add_argument("--quick", action="store_true", help="a few small workloads and short timing budgets")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the gate's random inputs")
    parser.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays instead of eager calls")
    parser.add_argument("--memory-scaling", action="store_true",
                        help="also measure peak extra memory of attention forward/backward against S")
    parser.add_argument("--no-timing", action="store_true", help="skip the timed records (with --memory-scaling)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any gate failed or erred")
    parser.add_argument("--gpus", default=None, metavar="all|N",
                        help="one process per operation on the first N GPUs (or all), --jobs per GPU at a time, "
                             "merged into --output (benchmarks/spread.py)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="processes at once: per GPU with --gpus, else N CPU processes, one per operation")
    if argv and argv[0] == "--":  # ``attnspec bench -- OPTIONS`` passes the separator on
        argv = argv[1:]
    return parser.parse_args(argv)


def label_pattern(expr: str) -> LabelPattern:
    """``-k``'s argument as a LabelPattern (argparse reports a bad one)."""
    try:
        return LabelPattern.parse(expr)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def bench_backends(names: list[str], ops: Iterable[str], device: str, *,
                   isolate: bool = True) -> list[RegistryEntry]:
    """The selected backends (all when ``names`` is empty) plus the baselines and reference rows of ``ops`` on
    ``device``.

    With ``isolate`` the registry's factories are first called in child processes (``conformance.probe``), so
    a factory that crashes or hangs is listed unavailable with the reason instead of ending the bench; only the
    factories that made a backend there are called here. Raises ValueError for a name that selects nothing and
    DiscoveryError when the registry cannot be loaded."""
    specs = [n for n in names if ":" in n]
    if isolate:
        listings = discover_isolated(specs)
        made = {e.name: e for e in discover(specs, factories={x.factory for x in listings if x.available})}
        entries = [made.get(x.name) or RegistryEntry(x.name, x.origin, unavailable=x.reason or "not made in "
                                                     "this process", factory=x.factory) for x in listings]
    else:
        entries = discover(specs)
    entries += [RegistryEntry(b.name, BASELINE_ORIGIN, backend=b) for b in baseline_backends()]
    return listed(entries, names, ops, device)


def listed(entries: list[SelectableT], names: list[str], ops: Iterable[str], device: str) -> list[SelectableT]:
    """What one bench process lists: the entries ``names`` selects (all when empty), then the baselines and
    reference rows of ``ops`` on ``device`` it does not select, in ``entries`` order."""
    chosen = select(entries, names)
    wanted = {baseline_of(op, device) for op in ops} | {n for op in ops for n in reference_rows_of(op, device)}
    return chosen + [e for e in entries if e.name in wanted and e not in chosen]


def listing_order(names: list[str], ops: Iterable[str], device: str) -> list[str]:
    """The names one bench process lists for ``names`` and ``ops`` on ``device``, in its order, with no backend
    made here: the registry as a probe child lists it, then the yardsticks by their baselines' names. Raises
    as :func:`bench_backends` does."""
    yardsticks = dict.fromkeys(b.backend for bench in BENCH_OPS.values() for b in bench.baselines if b.yardstick)
    entries = discover_isolated([n for n in names if ":" in n]) + [Listing(name, BASELINE_ORIGIN, "")
                                                                   for name in yardsticks]
    return [e.name for e in listed(entries, names, ops, device)]


def implements(entry: RegistryEntry, op: str) -> bool:
    """Whether the entry's backend has every contract method ``op`` calls (internal baselines are planned
    only for the operation they implement)."""
    return all(callable(getattr(entry.backend, name, None)) for name in BENCH_OPS[op].calls)


# ------------------------------------------------------------------------------------------------
# Records


def measure(backend: BackendLike, workload: Workload, device: str, seed: int, *, quick: bool, cuda_graph: bool,
            ceilings: Ceilings, cache: ReferenceCache) -> BenchRecord:
    """One record: gate, then (when it passed) timing, rates, fraction of ceiling and peak extra memory."""
    gate, call = run_gate(backend, workload, device, seed, cache)
    record = BenchRecord(op=workload.op, backend=backend.name, device=device, dtype=dtype_name(workload.dtype),
                         workload=workload.describe(), label=workload.label, seed=seed, gate=gate.status,
                         reason=gate.reason, errors=gate.errors, baseline=baseline_of(workload.op, device))
    if call is None:
        return record
    try:
        timing = timing_for(call, device, quick=quick, cuda_graph=cuda_graph)
        peak, probe = peak_bytes(call, device, backend)
    except Exception as exc:  # e.g. out of memory while timing: record it and go on
        return replace(record, gate=Status.ERROR, reason=f"timing: {type(exc).__name__}: {exc}")
    tflops, gbps = rates(workload, timing.median_s)
    ceiling = ceilings.matmul_tflops if tflops is not None else ceilings.copy_gbps
    return replace(record, median_s=timing.median_s, iqr_s=timing.iqr_s, reps=timing.reps, timing=timing.method,
                   timed=timed_call(backend, workload), tflops=tflops, gbps=gbps, peak_extra_bytes=peak,
                   peak_probe=probe,
                   fraction_of_ceiling=(tflops if tflops is not None else gbps) / ceiling if ceiling else None)


def add_speedups(records: list[BenchRecord]) -> None:
    """Fill ``speedup`` (baseline median / median), ``vs`` (each reference row's median / median, reference_rows_of)
    and ``flag`` of every timed record, in place."""
    timed = {(r.op, r.label, r.dtype, r.device, r.backend): r for r in records if r.median_s is not None}
    for r in records:
        flags = []
        base = timed.get((r.op, r.label, r.dtype, r.device, r.baseline))
        r.speedup = base.median_s / r.median_s if base is not None and base.median_s and r.median_s else None
        beside = [(n, timed.get((r.op, r.label, r.dtype, r.device, n)))
                  for n in reference_rows_of(r.op, r.device)]
        r.vs = {n: ref.median_s / r.median_s for n, ref in beside if ref is not None and ref.median_s and r.median_s}
        # Both flags are for CUDA only. On the CPU small workloads run from cache, above the DRAM copy
        # bandwidth, legitimately, and a vendor baseline's thread pool loses 10-50x when other processes hold
        # the cores, so a large speed-up there says more about the machine's load than about the timing.
        if (r.device == "cuda" and r.speedup is not None and r.speedup > SUSPICIOUS_SPEEDUP
                and is_vendor(r.baseline) and r.backend != r.baseline):
            flags.append(f"suspicious: {r.speedup:.1f}x over the vendor baseline {r.baseline}")
        if r.device == "cuda" and r.fraction_of_ceiling is not None and r.fraction_of_ceiling > 1.0:
            flags.append("suspicious: above the measured ceiling")
        r.flag = "; ".join(flags) or None


def computes_with_numpy(backend: BackendLike) -> bool:
    """Whether the module defining the backend's class imports NumPy (its allocations are then visible to
    ``tracemalloc``)."""
    module = sys.modules.get(type(backend).__module__)
    return module is not None and any(value is numpy for value in vars(module).values())


def peak_bytes(call: Callable[[], tuple], device: str, backend: BackendLike) -> tuple[int | None, str | None]:
    """Peak extra memory of one ``call`` after a warm-up call (``conformance.memory.peak_extra``), and the
    probe that saw it. On the CPU only NumPy backends are measured (tracemalloc sees NumPy's allocations);
    for others, torch's CPU allocator among them, no probe here is reliable: None."""
    if device == "cpu" and not computes_with_numpy(backend):
        return None, None
    call()
    _, peak = peak_extra(call, device)
    return peak.bytes, peak.probe


def _peak_of(backend: BackendLike, workload: Workload, device: str) -> int | None:
    """Peak extra bytes of one call of ``workload`` (inputs, and for backward the forward's outputs, made
    before the measurement)."""
    call = bind(backend, workload, make_inputs(workload, device, seed_for(f"memory-{workload.label}")))
    return peak_bytes(call, device, backend)[0]


def memory_scaling(entries: list[RegistryEntry], device: str) -> list[MemoryRecord]:
    """Peak extra memory of attention forward and backward over ``MEMORY_SEQ_LENS[device]`` per backend,
    with the least-squares log-log slope over the measured points (None with fewer than two)."""
    results = []
    for entry in entries:
        backend = entry.backend
        assert backend is not None
        for op in MEMORY_OPS:
            sweep = memory_workloads(op, device)
            if all(not_supported(backend, w, device) for w in sweep):
                continue
            seqs, peaks, notes = [], [], []
            for w in sweep:
                seqs.append(w.S)
                reasons = not_supported(backend, w, device)
                if reasons:
                    peaks.append(None)
                    notes.append(f"S={w.S}: unsupported: {'; '.join(reasons)}")
                    continue
                try:
                    peaks.append(_peak_of(backend, w, device))
                except Exception as exc:  # out of memory at large S ends the sweep of this backend
                    peaks.append(None)
                    notes.append(f"S={w.S}: {type(exc).__name__}: {exc}")
                    break
                finally:
                    if device == "cuda":
                        torch.cuda.empty_cache()
            if all(p is None for p in peaks):
                notes.append("no probe sees this backend's allocations on this device")
            points = [(s, p) for s, p in zip(seqs, peaks) if p]
            slope = loglog_slope([s for s, _ in points], [p for _, p in points]) if len(points) >= 2 else None
            results.append(MemoryRecord(
                backend=entry.name, op=op, device=device, dtype=dtype_name(sweep[0].dtype),
                workload={"B": 1, "H": sweep[0].H, "D": sweep[0].D, "causal": False}, S=seqs, peak_extra_bytes=peaks,
                slope=slope, reason="; ".join(notes) or None))
    return results


# ------------------------------------------------------------------------------------------------
# Output


def _fmt(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def summary_table(records: list[BenchRecord]) -> Table:
    """One row per record: the figures of timed ones, the reason of the others."""
    table = Table(title="attnspec bench")
    for col in ("op", "backend", "workload", "gate", "median ms", "IQR ms", "rate", "% ceil", "peak MiB",
                "speed-up", "flag / reason"):
        table.add_column(col, overflow="fold")
    for r in records:
        rate = (f"{r.tflops:.3g} TFLOP/s" if r.tflops is not None else f"{r.gbps:.3g} GB/s" if r.gbps is not None
                else "")
        style = "red" if r.gate is not None and r.gate.bad else "dim" if r.gate is Status.UNSUPPORTED else None
        note = r.flag or r.reason or ""
        table.add_row(r.op, r.backend, f"{r.label} {r.dtype}", r.gate.value if r.gate else "",
                      _fmt(r.median_s and r.median_s * 1e3, ".4g"), _fmt(r.iqr_s and r.iqr_s * 1e3, ".2g"),
                      rate, _fmt(r.fraction_of_ceiling and r.fraction_of_ceiling * 100, ".3g"),
                      _fmt(r.peak_extra_bytes and r.peak_extra_bytes / 2**20, ".4g"),
                      _fmt(r.speedup, ".3g"), note if len(note) <= 80 else note[:77] + "...", style=style)
    return table


def memory_table(rows: list[MemoryRecord]) -> Table:
    table = Table(title="peak extra memory against S")
    for col in ("backend", "op", "S", "peak MiB", "slope", "reason"):
        table.add_column(col, overflow="fold")
    for m in rows:
        table.add_row(m.backend, m.op, " ".join(f"{s:g}" for s in m.S if s is not None),
                      " ".join("-" if p is None else f"{p / 2**20:.1f}" for p in m.peak_extra_bytes),
                      _fmt(m.slope, ".2f"), m.reason or "")
    return table


# ------------------------------------------------------------------------------------------------


def run_plan(plan: list[tuple[Workload, RegistryEntry]], args: argparse.Namespace, run: BenchRun,
             progress_console: Console) -> None:
    """Gate and time each (workload, backend) of ``plan`` into ``run.records``, rewriting ``args.output``
    after every record so an interrupted run keeps what it measured."""
    cache = ReferenceCache()
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=progress_console, transient=True) as progress:
        task = progress.add_task("bench", total=len(plan))
        for workload, entry in plan:
            assert entry.backend is not None and run.device is not None
            progress.update(task, description=f"{workload.op} {entry.name} {workload.label}")
            seed = seed_for(f"{workload.op}-{workload.label}-{dtype_name(workload.dtype)}", args.seed)
            run.records.append(measure(entry.backend, workload, run.device, seed, quick=args.quick,
                                       cuda_graph=args.cuda_graph, ceilings=run.ceilings, cache=cache))
            add_speedups(run.records)
            write_bench(args.output, run)
            progress.advance(task)


def _listing(entry: RegistryEntry) -> BackendListing:
    return BackendListing(name=entry.name, origin=entry.origin, available=entry.available, reason=entry.unavailable,
                          description=(getattr(entry.backend, "description", "") or None) if entry.backend else None)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; 0 when the run completed (``--strict``: and every gate passed or was
    unsupported), 2 on bad arguments, 130 when interrupted (the JSON holds what was measured)."""
    interruptible()
    args = parse_args(argv)
    console = text_console(width=None if sys.stdout.isatty() else 200)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        console.print("--device cuda: no CUDA device here", style="red")
        return 2
    ops = args.op or list(OPS)
    tables = {op: matching(workloads(op, device, args.quick), args.patterns) for op in ops}
    if not args.no_timing and not any(tables.values()):
        console.print(unmatched(args.patterns, ops, device, args.quick), style="red")
        return 2
    if args.gpus or args.jobs > 1:
        from benchmarks import spread

        return spread.run(sys.argv[1:] if argv is None else argv, args,
                          ops if args.no_timing else [op for op in ops if tables[op]])
    progress_console = text_console(stderr=True)
    try:
        entries = bench_backends(args.backend, ops, device)
    except (DiscoveryError, ValueError) as exc:
        console.print(str(exc), style="red")
        return 2
    available = [e for e in entries if e.available]
    for e in entries:
        if not e.available:
            progress_console.print(f"backend {e.name} unavailable: {e.unavailable}", style="dim")
    provenance = collect()
    run = BenchRun(device=device, provenance=provenance, argv=sys.argv[1:] if argv is None else argv,
                   quick=args.quick, backends=[_listing(e) for e in entries],
                   ceilings=measure_ceilings(device, (provenance.gpu if device == "cuda" else provenance.cpu) or ""))
    plan = [] if args.no_timing else [(w, e) for op in ops for w in tables[op]
                                      for e in available if e.origin != BASELINE_ORIGIN or implements(e, op)]
    try:
        run_plan(plan, args, run, progress_console)
        if args.memory_scaling:
            run.memory_scaling = memory_scaling(available, device)
            write_bench(args.output, run)
    except KeyboardInterrupt:
        run.interrupted = True
        write_bench(args.output, run)
        console.print(f"interrupted; {len(run.records)} records written to {args.output}", style="yellow")
        return 130
    run.finished = now()
    write_bench(args.output, run)
    _print_summary(console, run, args.output)
    return 1 if args.strict and any(r.gate is not None and r.gate.bad for r in run.records) else 0


def _print_summary(console: Console, run: BenchRun, output: Path) -> None:
    if run.records:
        console.print(summary_table(run.records))
    if run.memory_scaling:
        console.print(memory_table(run.memory_scaling))
    c = run.ceilings
    console.print(f"ceilings on {c.device}: matmul {c.matmul_tflops:.2f} TFLOP/s ({c.matmul}), copy "
                  f"{c.copy_gbps:.1f} GB/s; results in {output}")


if __name__ == "__main__":
    sys.exit(main())
