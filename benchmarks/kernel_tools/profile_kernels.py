"""Nsight Compute profiles of the Triton and CuPy kernels: ``python -m benchmarks.kernel_tools.profile_kernels``.

On a GPU machine with ``ncu`` on PATH (or ``--ncu PATH``), for each target of ``--sections`` (default all:
triton-fwd, cupy-fwd, triton-bwd, cupy-bwd, triton-kd, cupy-kd; shapes in ``profile_targets``) it runs one
ncu process,
    ncu --clock-control none --profile-from-start off --target-processes all --print-units base --csv
        --page raw --metrics LIST python -m benchmarks.kernel_tools.profile_kernels --run TARGET
with ``--target-seconds`` (default 150) as its limit, and writes ``--out`` (JSON) after each target: device,
provenance (versions, commit), the ncu version, the metrics, the limit rule, and per target its cases, ncu's
exit status, seconds, error (None when it ran), the metrics dropped, ncu's raw CSV output, and per kernel
launch (grouped by case) registers per thread, shared memory per block, theoretical and achieved occupancy
and what limits the theoretical one, duration, tensor-pipe, XU-pipe and issue-slot activity, SM and DRAM
throughput (% of peak), the warp stalls (cycles per issued instruction by reason) and a one-line ``limit``
(``ncu_report.LIMIT_RULE``). When ncu fails and its ``==ERROR==`` lines name requested metrics, the target
runs once more without them; any other failure (ncu missing, a crash, output with no CSV, the time limit)
is recorded as the target's error and the next target runs. Exit status 1 when a target has an error;
``--run`` exits 1 when a case failed (its traceback on stderr, the other cases still profiled).
``--reparse`` reads the ncu output kept in ``--out`` again, without ncu, and rewrites the records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.kernel_tools.bench_triton import tool_arguments
from benchmarks.kernel_tools.limited import Finished, run_limited
from benchmarks.kernel_tools.ncu_report import (
    LIMIT_RULE,
    METRICS,
    STALL_REGEX,
    KernelProfile,
    NcuOutputError,
    by_case,
    parse_raw_csv,
    unknown_metrics,
)
from benchmarks.kernel_tools.profile_targets import FULL, MARKER_NAME, SMALL, TARGETS, run_target
from conformance.interrupts import interruptible

#: characters of ncu's stderr kept per target
STDERR_TAIL = 4000


@dataclass
class TargetResult:
    """One target's ncu run, what it printed, and the launches read from it."""

    cases: list[str]
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0
    error: str | None = None
    dropped_metrics: list[str] = field(default_factory=list)
    csv: str = ""
    stderr_tail: str = ""
    kernels: list[KernelProfile] = field(default_factory=list)


def ncu_command(ncu: str, metrics: list[str], target: str, small: bool) -> list[str]:
    """The ncu command line that profiles ``target``'s ranges with ``metrics``."""
    child = [sys.executable, "-m", "benchmarks.kernel_tools.profile_kernels", "--run", target]
    return [ncu, "--clock-control", "none", "--profile-from-start", "off", "--target-processes", "all",
            "--print-units", "base", "--csv", "--page", "raw", "--metrics", ",".join(metrics), *child,
            *(["--small"] if small else [])]


def ncu_version(ncu: str) -> str:
    """The last line ``ncu --version`` prints, or why there is none."""
    try:
        done = run_limited([ncu, "--version"], 60)
    except OSError as exc:
        return f"unavailable: {exc}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if done.returncode == 0 and lines else f"unavailable: exit status {done.returncode}"


def _read(result: TargetResult, done: Finished) -> None:
    """Fill ``result`` from one ncu run: its output, and its launches where the output holds the CSV."""
    result.returncode, result.csv, result.stderr_tail = done.returncode, done.stdout, done.stderr[-STDERR_TAIL:]
    result.error = None
    try:
        result.kernels = by_case(parse_raw_csv(done.stdout), result.cases, MARKER_NAME)
    except NcuOutputError as exc:
        result.error = str(exc)
    if done.returncode != 0:
        ended = "was killed at the time limit" if done.returncode is None else f"exited {done.returncode}"
        said = next((line.strip() for line in (done.stderr + done.stdout).splitlines() if "==ERROR==" in line), "")
        result.error = f"ncu {ended}" + (f" ({said})" if said else "") + (f"; {result.error}" if result.error else "")


def case_labels(name: str, small: bool) -> list[str]:
    return [case.label for case in TARGETS[name](SMALL if small else FULL)]


def profile_target(name: str, ncu: str, seconds: float, small: bool) -> TargetResult:
    """Profile one target, dropping the metrics ncu names as unknown and trying once more if it failed."""
    result = TargetResult(cases=case_labels(name, small))
    metrics = [*METRICS, STALL_REGEX]
    start = time.monotonic()
    for attempt in range(2):
        result.command = ncu_command(ncu, metrics, name, small)
        try:
            done = run_limited(result.command, seconds - (time.monotonic() - start))
        except OSError as exc:
            result.error = f"ncu could not start: {exc}"
            break
        _read(result, done)
        unknown = unknown_metrics(done.stdout + done.stderr, metrics)
        if result.error is None or attempt == 1 or not unknown or len(unknown) == len(metrics):
            break
        result.dropped_metrics += unknown
        metrics = [metric for metric in metrics if metric not in unknown]
    result.seconds = time.monotonic() - start
    return result


def reparse(path: Path) -> int:
    """Read each target's kept ncu output in the JSON file at ``path`` again (the records and the limit rule as
    this version of the tool derives them) and rewrite the file; a target whose ncu printed nothing is left as
    it is. Exit status as the driver's."""
    from conformance.codec import to_json

    doc = json.loads(path.read_text())
    for target in doc["targets"].values():
        if target["csv"]:
            result = TargetResult(cases=target["cases"])
            _read(result, Finished(target["returncode"], target["csv"], target["stderr_tail"]))
            target.update(error=result.error, kernels=to_json(result.kernels))
    doc["limit_rule"] = LIMIT_RULE
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if any(target["error"] for target in doc["targets"].values()) else 0


def _more_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", choices=sorted(TARGETS), help="run one target's kernels (what ncu profiles)")
    parser.add_argument("--reparse", action="store_true",
                        help="no ncu: read the ncu output kept in --out again and rewrite its records")
    parser.add_argument("--ncu", default="ncu", help="the ncu executable (default: ncu on PATH)")
    parser.add_argument("--target-seconds", type=float, default=150.0, help="time limit of each target's ncu run")


def _header(ncu: str) -> dict[str, object]:
    from conformance.codec import to_json
    from conformance.provenance import collect

    provenance = collect()
    return {"tool": "profile_kernels", "device": provenance.gpu, "provenance": to_json(provenance),
            "ncu": {"executable": ncu, "version": ncu_version(ncu)}, "metrics": [*METRICS, STALL_REGEX],
            "limit_rule": LIMIT_RULE, "targets": {}}


def _summary(name: str, result: TargetResult) -> str:
    lines = [f"{name}: {len(result.kernels)} launches in {result.seconds:.0f} s"
             + (f", error: {result.error}" if result.error else "")]
    lines += [f"  {k.case} {k.kernel[:60]}: {k.duration_us} us, {k.limit}" for k in result.kernels]
    return "\n".join(lines)


def main() -> int:
    args = tool_arguments(__doc__, "profile.json", ",".join(TARGETS), _more_arguments)
    interruptible()
    if args.run:
        return 1 if run_target(args.run, SMALL if args.small else FULL) else 0
    if args.reparse:
        return reparse(args.out)
    names = args.sections.split(",")
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        print(f"unknown targets {unknown}; the targets are {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    from conformance.codec import to_json

    doc = _header(args.ncu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            result = profile_target(name, args.ncu, args.target_seconds, args.small)
        except KeyboardInterrupt:  # the step's limit (timeout --signal=INT): ncu is gone, record and stop
            result = TargetResult(cases=case_labels(name, args.small), error="interrupted (SIGINT) before ncu finished")
            doc["targets"][name] = to_json(result)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
            return 1
        doc["targets"][name] = to_json(result)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(_summary(name, result), flush=True)
    return 1 if any(target["error"] for target in doc["targets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
