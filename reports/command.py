"""The ``attnspec`` command line: backends, conformance, bench, report, and run (all of them).

backends and conformance are ``conformance.cli``'s, bench is ``benchmarks.bench``'s and report is
``reports.build``'s. ``attnspec run``, the main job, is conformance on every available backend (each in its
own process), a quick benchmark, then the HTML report; without a GPU every backend runs the quick matrix.
The command lives in the top layer because it runs every layer below it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from conformance.cli import (
    CONFORMANCE_RESULTS,
    RESULTS_DIR,
    add_commands,
    add_conformance_options,
    cmd_conformance,
    cuda_available,
    prepare_environment,
)
from conformance.interrupts import interruptible

BENCH_RESULTS = RESULTS_DIR / "bench.json"
REPORT_DIR = Path("reports") / "out"
#: subcommands whose options belong to another module's parser, handed over untouched
DELEGATED = {"bench": "benchmarks.bench", "report": "reports.build"}


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: conformance on every available backend, a quick benchmark, the report."""
    quick = args.quick or not cuda_available()
    conformance_args = argparse.Namespace(
        backend=args.backend, quick=quick, results=str(CONFORMANCE_RESULTS), append=False,
        case_timeout=args.case_timeout, xfails_file=args.xfails_file, device=[], k=None, clause=args.clause,
        progress_interval=args.progress_interval, every_case=args.every_case, jobs=args.jobs, gpus=args.gpus,
        shard=args.shard)
    status = cmd_conformance(conformance_args)
    bench_argv = (["--quick", "--memory-scaling", "--output", str(BENCH_RESULTS)]
                  + [a for b in args.backend for a in ("--backend", b)])
    bench_status = _optional_step("bench", DELEGATED["bench"], bench_argv)
    report_argv = ["--conformance", str(CONFORMANCE_RESULTS), "--bench", str(BENCH_RESULTS),
                   "--output", str(REPORT_DIR)]
    report_status = _optional_step("report", DELEGATED["report"], report_argv)
    return status or bench_status or report_status


def _optional_step(name: str, module: str, argv: list[str]) -> int:
    """Run a step whose dependencies are an extra (bench, report) when they are installed; say so when not."""
    try:
        main = importlib.import_module(module).main
    except ImportError as exc:
        print(f"attnspec run: {name} skipped ({exc})")
        return 0
    return int(main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnspec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    sub.add_parser("bench", help="benchmarks behind a correctness gate (attnspec bench --help)", add_help=False)
    sub.add_parser("report", help="build the HTML report (attnspec report --help)", add_help=False)
    p = sub.add_parser("run", help="the main job: conformance + quick bench + report")
    add_conformance_options(p)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    interruptible()
    prepare_environment()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:  # argparse's REMAINDER refuses a remainder that starts with an option
        return _optional_step(argv[0], DELEGATED[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
