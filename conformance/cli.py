"""The ``attnspec`` command line: backends, conformance, bench, report, and run (all of them).

``attnspec run`` is the main job: conformance on every available backend (each in its own process),
a quick benchmark, then the HTML report. On a machine without a GPU the Triton backend runs in Triton's
interpreter (``TRITON_INTERPRET=1`` is set for it) and every backend runs the quick matrix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("results")
CONFORMANCE_RESULTS = RESULTS_DIR / "conformance.jsonl"
BENCH_RESULTS = RESULTS_DIR / "bench.json"
REPORT_DIR = Path("reports") / "out"
STATUS_STYLE = {"passed": "green", "failed": "bold red", "error": "bold red", "crashed": "bold magenta",
                "timeout": "bold magenta", "unsupported": "dim", "not_implemented": "dim", "xfail": "yellow",
                "xpass": "yellow"}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _prepare_environment() -> None:
    """Without a GPU, Triton can only run interpreted: say so before anything imports it."""
    if not _cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def cmd_backends(args: argparse.Namespace) -> int:
    """List every backend found: available or not (with the reason), origin, and what it declares."""
    from rich.console import Console
    from rich.table import Table

    from implementations.base import discover

    console = Console()
    table = Table(title="attnspec backends", show_lines=True)
    for column in ("backend", "status", "origin", "declares"):
        table.add_column(column, overflow="fold")
    for entry in discover(args.backend_spec):
        if entry.backend is None:
            table.add_row(entry.name, "[red]unavailable[/red]", entry.origin, entry.unavailable or "")
            continue
        caps = entry.backend.capabilities.describe()
        ops = [op for op in _operations() if callable(getattr(entry.backend, op, None))]
        declared = (f"ops: {', '.join(ops)}\ndevices: {', '.join(caps['devices'])}; dtypes: "
                    f"{', '.join(caps['dtypes'])}; backward: {', '.join(caps['backward_dtypes']) or '-'}\n"
                    f"head dims {caps['head_dims']}; causal {caps['causal']} (True = {caps['causal_default']}); "
                    f"gqa {caps['gqa']}; memory {caps['memory']}; saves {caps['saves']}; "
                    f"deterministic {caps['deterministic']}")
        if caps["notes"]:
            declared += "\nnotes: " + " | ".join(caps["notes"])
        table.add_row(entry.name, "[green]available[/green]", entry.origin, declared)
    console.print(table)
    return 0


def _operations() -> list[str]:
    from implementations.base import OPERATIONS

    return list(OPERATIONS)


def _selected_backends(names: list[str], specs: list[str]) -> tuple[list[str], list[Any]]:
    """Names (or specs) of the available backends to run, and the unavailable entries to report."""
    from implementations.base import discover, select

    entries = select(discover(specs), names) if names else discover(specs)
    runnable = [e.origin.removeprefix("--backend ") if e.origin.startswith("--backend ") else e.name
                for e in entries if e.available]
    return runnable, [e for e in entries if not e.available]


def cmd_conformance(args: argparse.Namespace) -> int:
    """Run the conformance suite, one subprocess per backend, and print the verdicts."""
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner

    from conformance.supervisor import counts, read_records, run_backend

    console = Console()
    specs = [b for b in args.backend if ":" in b]
    try:
        runnable, unavailable = _selected_backends(args.backend, specs)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    for entry in unavailable:
        console.print(f"[dim]skipping {entry.name}: unavailable ({entry.unavailable})[/dim]")
    if not runnable:
        console.print("[red]no available backend to run[/red]")
        return 2
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if not args.append and results.exists():
        results.unlink()
    pytest_args = (["--quick"] if args.quick else []) + [f"--case-timeout={args.case_timeout}"]
    for path in args.xfails_file:
        pytest_args.append(f"--xfails-file={path}")
    for device in args.device:
        pytest_args.append(f"--device={device}")
    if args.k:
        pytest_args += ["-k", args.k]
    failed = False
    for i, name in enumerate(runnable, 1):
        label = f"[{i}/{len(runnable)}] {name}"
        spinner = Spinner("dots", text=label)

        def poll(spinner: Spinner = spinner, label: str = label, name: str = name) -> None:
            done = counts(read_records(results), name)
            summary = ", ".join(f"{n} {s}" for s, n in sorted(done.items()))
            spinner.update(text=f"{label}: {sum(done.values())} cases ({summary})")

        try:
            with Live(spinner, console=console, refresh_per_second=4, transient=True):
                run = run_backend(name, results, pytest_args, log_dir=results.parent / "logs" / results.stem,
                                  on_poll=poll)
        except KeyboardInterrupt:
            console.print(f"[magenta]{label}: interrupted; the cases recorded so far are kept[/magenta]")
            print_verdicts(console, read_records(results))
            console.print(f"results: {results}")
            return 130
        done = counts(read_records(results), name)
        bad = done["failed"] + done["error"] + done["crashed"] + done["timeout"]
        failed |= bad > 0 or run.exit_codes[-1] not in (0, 1, 5)
        note = f" [magenta]{run.restarts} restart(s) after crashes[/magenta]" if run.restarts else ""
        colour = "red" if bad else "green"
        console.print(f"{label}: [{colour}]{sum(done.values())} cases, {bad} bad[/{colour}] "
                      f"({', '.join(f'{n} {s}' for s, n in sorted(done.items()))}){note}  log: {run.log}")
    print_verdicts(console, read_records(results))
    console.print(f"results: {results}")
    return 1 if failed else 0


def print_verdicts(console: Any, records: list[dict[str, Any]]) -> None:
    """The clause x backend verdict table: the worst status of each cell, with counts."""
    from rich.table import Table

    from conformance.spec import CLAUSES

    cases = [r for r in records if r.get("kind") == "case"]
    columns = sorted({f"{r['backend']}@{r['device']}" for r in cases})
    cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in cases:
        cells[(r["clause"], f"{r['backend']}@{r['device']}")][r["status"]] += 1
    table = Table(title="verdicts (clause x backend)")
    table.add_column("clause")
    for c in columns:
        table.add_column(c, overflow="fold")
    worst_first = ("crashed", "timeout", "error", "failed", "xpass", "passed", "xfail", "unsupported",
                   "not_implemented", "skipped")
    for cid, clause in CLAUSES.items():
        row = []
        for col in columns:
            n = cells.get((cid, col))
            if not n:
                row.append("-")
                continue
            worst = next(s for s in worst_first if n[s])
            text = " ".join(f"{n[s]} {s}" for s in worst_first if n[s])
            row.append(f"[{STATUS_STYLE.get(worst, '')}]{text}[/]")
        if any(cell != "-" for cell in row):
            table.add_row(f"{cid} {clause.title}", *row)
    console.print(table)


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: conformance on every available backend, a quick benchmark, the report."""
    quick = args.quick or not _cuda()
    conformance_args = argparse.Namespace(
        backend=args.backend, quick=quick, results=str(CONFORMANCE_RESULTS), append=False,
        case_timeout=args.case_timeout, xfails_file=args.xfails_file, device=[], k=None)
    status = cmd_conformance(conformance_args)
    bench_argv = (["--quick", "--memory-scaling", "--output", str(BENCH_RESULTS)]
                  + [a for b in args.backend for a in ("--backend", b)])
    bench_status = _optional_step("bench", "benchmarks.bench", bench_argv)
    report_argv = ["--conformance", str(CONFORMANCE_RESULTS), "--bench", str(BENCH_RESULTS),
                   "--output", str(REPORT_DIR)]
    report_status = _optional_step("report", "reports.build", report_argv)
    return status or bench_status or report_status


def _optional_step(name: str, module: str, argv: list[str]) -> int:
    """Run a later step of ``attnspec run`` when its module is installed; say so when it is not."""
    import importlib

    try:
        main = importlib.import_module(module).main
    except ImportError as exc:
        print(f"attnspec run: {name} skipped ({exc})")
        return 0
    return int(main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnspec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list backends, available or not, and what they declare")
    p.add_argument("--backend", dest="backend_spec", action="append", default=[], metavar="MODULE:FACTORY",
                   help="also load this factory")
    p.set_defaults(func=cmd_backends)

    def conformance_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", action="append", default=[], metavar="NAME",
                       help="backend name or package.module:factory (repeatable; default: all available)")
        p.add_argument("--quick", action="store_true", help="small shapes, few head dims, primary dtype")
        p.add_argument("--case-timeout", type=float, default=600.0, metavar="SECONDS")
        p.add_argument("--xfails-file", action="append", default=[], metavar="PATH")

    p = sub.add_parser("conformance", help="run the conformance suite (each backend in its own process)")
    conformance_options(p)
    p.add_argument("--results", default=str(CONFORMANCE_RESULTS), metavar="PATH")
    p.add_argument("--append", action="store_true", help="append to the results file instead of replacing it")
    p.add_argument("--device", action="append", default=[], choices=["cpu", "cuda"])
    p.add_argument("-k", default=None, help="pytest -k expression (e.g. 'ATT or KD')")
    p.set_defaults(func=cmd_conformance)

    sub.add_parser("bench", help="benchmarks behind a correctness gate (attnspec bench --help)", add_help=False)
    sub.add_parser("report", help="build the HTML report (attnspec report --help)", add_help=False)

    p = sub.add_parser("run", help="the main job: conformance + quick bench + report")
    conformance_options(p)
    p.set_defaults(func=cmd_run)
    return parser


#: subcommands whose options belong to another module's parser, handed over untouched
DELEGATED = {"bench": "benchmarks.bench", "report": "reports.build"}


def main(argv: list[str] | None = None) -> int:
    _prepare_environment()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:  # argparse's REMAINDER refuses a remainder that starts with an option
        return _optional_step(argv[0], DELEGATED[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
