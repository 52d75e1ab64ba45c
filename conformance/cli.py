"""The conformance commands of ``attnspec``: backends and conformance.

``python -m conformance.cli`` runs them alone; the whole ``attnspec`` command, with bench, report and run,
is ``reports.command``, in the layer above the benchmarks and the report, which it also runs. On a machine
without a GPU the Triton backend runs in Triton's interpreter (``TRITON_INTERPRET=1`` is set for it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from conformance.codec import read_records
from conformance.console import text_console
from conformance.interrupts import interruptible
from conformance.provenance import now
from conformance.results import ORDER
from conformance.results_lock import ResultsLock
from conformance.supervisor import BackendRun, Outcome, RunProgress, run_backend
from conformance.verdicts import print_verdicts

if TYPE_CHECKING:
    from conformance.probe import Listing

RESULTS_DIR = Path("results")
CONFORMANCE_RESULTS = RESULTS_DIR / "conformance.jsonl"
#: seconds between two plain progress lines when the output is not a terminal (CI, ``| tee``)
PROGRESS_INTERVAL_S = 10.0
#: lines of a backend's log shown on the console when its run stopped outside any case
LOG_TAIL_LINES = 15


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_environment() -> None:
    """Without a GPU, Triton can only run interpreted: say so before anything imports it."""
    if not cuda_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def cmd_backends(args: argparse.Namespace) -> int:
    """List every backend found (each factory called in a child process): a compact table, or what each
    declares with ``--verbose``. Exits 1 when a backend asked for with ``--backend`` is unavailable."""
    from rich.table import Table

    from conformance.probe import DiscoveryError, discover_isolated

    console = text_console()
    try:
        listings = discover_isolated(args.backend_spec)
    except DiscoveryError as exc:
        console.print(Text(str(exc), "red"))
        return 2
    table = Table(title="attnspec backends", show_lines=args.verbose)
    for column in ("backend", "status", "origin", "declares" if args.verbose else "description"):
        table.add_column(column, overflow="fold")
    for listing in listings:
        status = Text("available", "green") if listing.available else Text("unavailable", "red")
        if not listing.available:
            detail = listing.reason or ""
        elif args.verbose:
            detail = _declared(listing)
        else:
            detail = listing.description
        table.add_row(Text(listing.name), status, Text(listing.origin), Text(detail))
    console.print(table)
    requested = [entry for entry in listings if entry.spec_requested and entry.factory in args.backend_spec]
    failed = [entry for entry in requested if not entry.available]
    for entry in failed:
        console.print(Text(f"{entry.factory}: unavailable ({entry.reason}); a --backend module must be importable "
                           "(installed, or on PYTHONPATH)", "red"))
    return 1 if failed else 0


def _declared(listing: Listing) -> str:
    caps = listing.capabilities or {}
    declared = (f"ops: {', '.join(listing.operations)}\ndevices: {', '.join(caps['devices'])}; dtypes: "
                f"{', '.join(caps['dtypes'])}; backward: {', '.join(caps['backward_dtypes']) or '-'}\n"
                f"head dims {caps['head_dims']}; causal {caps['causal']} (True = {caps['causal_default']}); "
                f"gqa {caps['gqa']}; memory {caps['memory']}; saves {caps['saves']}; "
                f"deterministic {caps['deterministic']}")
    if caps["notes"]:
        declared += "\nnotes: " + " | ".join(caps["notes"])
    return declared


def _problems(args: argparse.Namespace) -> list[str]:
    """Arguments refused before any backend runs: each with its cause."""
    from conformance.spec import CLAUSES

    problems = [f"cannot read --xfails-file {path}" for path in args.xfails_file
                if not (Path(path).is_file() and os.access(path, os.R_OK))]
    areas = {c.split("-")[0] for c in CLAUSES}
    problems += [f"unknown --clause {c} (clauses: {', '.join(CLAUSES)}; areas: {', '.join(sorted(areas))})"
                 for c in args.clause if c not in CLAUSES and c not in areas]
    if args.case_timeout <= 0:
        problems.append(f"--case-timeout must be positive, got {args.case_timeout:g}")
    from conformance.spread import option_problems

    problems += option_problems(args.jobs, args.gpus, args.shard)
    return problems


class _Stop(KeyboardInterrupt):
    """SIGTERM, handled like SIGINT: the children are stopped and what they recorded is kept."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def cmd_conformance(args: argparse.Namespace) -> int:
    """Run the conformance suite, one subprocess per backend, and print the verdicts. Exits 1 when a case is
    bad (failed, error, crashed, timeout, interrupted) or a backend's run did not finish, 2 on bad arguments
    or a selection that matches no case, 130 / 143 when stopped by SIGINT / SIGTERM."""
    console = text_console()
    problems = _problems(args)
    for problem in problems:
        console.print(Text(f"attnspec conformance: {problem}", "red"))
    if problems:
        return 2
    results = Path(args.results)
    lock = ResultsLock(results)
    if not lock.acquire():
        console.print(Text(f"attnspec conformance: {results} is being written by another run (lock {lock.path} "
                           f"held by pid {lock.path.read_text().strip() or '?'}); use another --results", "red"))
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return _conformance(args, console, results)
    except KeyboardInterrupt as exc:  # before any backend ran (during discovery)
        console.print(Text("attnspec conformance: interrupted before any backend ran", "magenta"))
        return 143 if isinstance(exc, _Stop) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        lock.release()


def _conformance(args: argparse.Namespace, console: Console, results: Path) -> int:
    from conformance.probe import DiscoveryError, discover_isolated
    from implementations.registry import select

    try:
        listings = discover_isolated([b for b in args.backend if ":" in b])
        chosen = select(listings, args.backend) if args.backend else listings
    except (DiscoveryError, ValueError) as exc:
        console.print(Text(str(exc), "red"))
        return 2
    for entry in chosen:
        if not entry.available:
            console.print(Text(f"skipping {entry.name}: unavailable ({entry.reason})", "dim"))
    runnable = _children([entry for entry in chosen if entry.available])
    if not runnable:
        console.print(Text("no available backend to run", "red"))
        return 2
    previous = results.with_name(results.name + ".previous")  # what the run replaces: the units' estimates
    if results.exists() and not args.append:
        os.replace(results, previous)
    common = [f"--run-started={now()}"] + (["--quick"] if args.quick else [])
    common += ["--every-case"] if args.every_case else []
    common += [f"--xfails-file={path}" for path in args.xfails_file]
    common += [f"--device={device}" for device in args.device]
    common += (["-k", args.k] if args.k else []) + ([f"--shard={args.shard}"] if args.shard else [])
    try:
        if args.gpus or args.jobs > 1:
            return _conformance_spread(args, console, results, runnable, common,
                                       results if args.append else previous)
        return _conformance_each(args, console, results, runnable, common + [f"--clause={c}" for c in args.clause])
    finally:
        previous.unlink(missing_ok=True)


def _conformance_each(args: argparse.Namespace, console: Console, results: Path, runnable: dict[str, list[Listing]],
                      common: list[str]) -> int:
    """One backend child after the other."""
    bad_run = empty = False
    for i, (selector, entries) in enumerate(runnable.items(), 1):
        label = f"[{i}/{len(runnable)}] {', '.join(e.name for e in entries)}"
        try:
            run = _run_one(console, label, selector, results, common + [f"--factory={entries[0].factory}"], args)
        except KeyboardInterrupt as exc:
            return _interrupted(console, label, results, exc)
        bad_run |= run.progress.bad > 0 or run.outcome is not Outcome.FINISHED
        empty |= run.progress.cases == 0 and run.outcome is Outcome.FINISHED and not args.shard
        _print_backend_summary(console, label, run)
    return _verdicts(console, results, bad_run, empty)


def _conformance_spread(args: argparse.Namespace, console: Console, results: Path,
                        runnable: dict[str, list[Listing]], common: list[str], previous: Path) -> int:
    """Backend × chapter children on the GPUs (``--gpus``) or on ``--jobs`` CPU slots at once."""
    from conformance.spread import SpreadRun, spread_conformance

    spread = SpreadRun(results, common, args.case_timeout,
                       on_done=lambda label, run: _print_backend_summary(console, label, run),
                       say=lambda text: console.print(Text(text, "red")))
    try:
        outcome = spread_conformance(spread, runnable, args, previous)
    except KeyboardInterrupt as exc:
        return _interrupted(console, "the run", results, exc)
    return _verdicts(console, results, *outcome)


def _interrupted(console: Console, label: str, results: Path, exc: KeyboardInterrupt) -> int:
    name = "SIGTERM" if isinstance(exc, _Stop) else "SIGINT"
    console.print(Text(f"{label}: interrupted ({name}); the cases recorded so far are kept", "magenta"))
    print_verdicts(console, read_records(results))
    console.print(Text(f"results: {results}"))
    return 143 if isinstance(exc, _Stop) else 130


def _verdicts(console: Console, results: Path, bad_run: bool, empty: bool) -> int:
    print_verdicts(console, read_records(results))
    console.print(Text(f"results: {results}"))
    if empty:
        console.print(Text("the selection (--clause / -k / --device) matches no case of a backend above", "red"))
    return 1 if bad_run else (2 if empty else 0)


def _children(entries: list[Listing]) -> dict[str, list[Listing]]:
    """The backends of each pytest child, by what its ``--backend`` says: a ``package.module:factory`` spec that
    makes several backends selects them all, so they share one child."""
    children: dict[str, list[Listing]] = {}
    for entry in entries:
        children.setdefault(entry.selector, []).append(entry)
    return children


def _run_one(console: Console, label: str, selector: str, results: Path, pytest_args: list[str],
             args: argparse.Namespace) -> BackendRun:
    """One backend's supervised run, with a live line on a terminal and a plain line every few seconds
    elsewhere."""
    from rich.live import Live
    from rich.spinner import Spinner

    log_dir = results.parent / "logs" / results.stem
    if console.is_terminal:
        spinner = Spinner("dots", text=Text(label))

        def live(progress: RunProgress) -> None:
            spinner.update(text=Text(f"{label}: {_summary(progress)}"))

        with Live(spinner, console=console, refresh_per_second=4, transient=True):
            return run_backend(selector, results, pytest_args, case_timeout=args.case_timeout,
                               log_dir=log_dir, on_poll=live)
    last = [time.monotonic()]

    def plain(progress: RunProgress) -> None:
        if time.monotonic() - last[0] >= args.progress_interval:
            last[0] = time.monotonic()
            flight = progress.in_flight()
            running = f"; running {flight[0].id} for {time.monotonic() - flight[1]:.0f} s" if flight else ""
            console.print(Text(f"{label}: {_summary(progress)}{running}"), soft_wrap=True)

    return run_backend(selector, results, pytest_args, case_timeout=args.case_timeout, log_dir=log_dir,
                       on_poll=plain)


def _summary(progress: RunProgress) -> str:
    """``12 cases, 1 bad (1 failed, 11 passed)``: statuses in severity order."""
    parts = ", ".join(f"{progress.statuses[s]} {s}" for s in ORDER if progress.statuses[s])
    return f"{progress.cases} cases, {progress.bad} bad" + (f" ({parts})" if parts else "")


def _print_backend_summary(console: Console, label: str, run: BackendRun) -> None:
    line = Text(f"{label}: ")
    line.append(_summary(run.progress), "red" if run.progress.bad or run.outcome is not Outcome.FINISHED
                else "green")
    if run.restarts:
        line.append(f" {run.restarts} restart(s) after crashes or timeouts", "magenta")
    line.append(f"  log: {run.log}")
    console.print(line, soft_wrap=True)
    if run.outcome is Outcome.INTERRUPTED:
        console.print(Text(f"{label}: the backend's run was interrupted", "magenta"))
    elif run.outcome is Outcome.ABORTED:
        console.print(Text(f"{label}: stopped before finishing: {run.problem}; the end of its log:", "red"))
        lines = run.log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        console.print(Text("\n".join("    " + ln for ln in lines)), soft_wrap=True)


def add_conformance_options(p: argparse.ArgumentParser) -> None:
    """The options ``attnspec conformance`` shares with ``attnspec run``."""
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help="backend name or package.module:factory (repeatable; default: all available)")
    p.add_argument("--quick", action="store_true", help="small shapes, few head dims, primary dtype")
    p.add_argument("--every-case", action="store_true",
                   help="backends that declare an emulator (Triton's interpreter) meet every case, not a "
                        "sample of each clause's")
    p.add_argument("--case-timeout", type=float, default=600.0, metavar="SECONDS")
    p.add_argument("--xfails-file", action="append", default=[], metavar="PATH")
    p.add_argument("--clause", action="append", default=[], metavar="ID",
                   help="run only this clause (ATT-4) or area (ATT); repeatable")
    p.add_argument("--progress-interval", type=float, default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                   help="seconds between progress lines when the output is not a terminal")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N backend x chapter processes at once (with --gpus: N per GPU; default 1, and "
                        "without --gpus one backend after the other)")
    p.add_argument("--gpus", default=None, metavar="all|N",
                   help="hand backend x chapter processes to the first N GPUs (or all), --jobs at a time per "
                        "GPU, each process seeing its GPU alone (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run only shard K of N of the matrix (a fixed split of the test ids, for a CI matrix)")


def add_commands(sub: Any) -> None:
    """The ``backends`` and ``conformance`` subcommands, added to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("backends", help="list backends, available or not, and what they declare")
    p.add_argument("--backend", dest="backend_spec", action="append", default=[], metavar="MODULE:FACTORY",
                   help="also load this factory (its module must be importable: installed, or on PYTHONPATH); "
                        "exit 1 when it is unavailable")
    p.add_argument("--verbose", "-v", action="store_true", help="what each backend declares, notes included")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("conformance", help="run the conformance suite (each backend in its own process)")
    add_conformance_options(p)
    p.add_argument("--results", default=str(CONFORMANCE_RESULTS), metavar="PATH")
    p.add_argument("--append", action="store_true", help="append to the results file instead of replacing it")
    p.add_argument("--device", action="append", default=[], choices=["cpu", "cuda"])
    p.add_argument("-k", default=None, help="pytest -k expression over test names and ids, clause ids included "
                                            "(e.g. 'ATT-4 or KD'); substring match: ATT-1 also selects ATT-10")
    p.set_defaults(func=cmd_conformance)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnspec", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    interruptible()
    prepare_environment()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
