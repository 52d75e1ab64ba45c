"""The speed-up of ``attnspec conformance`` spread over slots: one configuration against another.

    python -m benchmarks.conformance_speedup --base "--gpus 1" --spread "--gpus 2" --output speedup.json \\
        -- --quick --device cuda --backend triton --backend torch-flash

runs the conformance command once with each configuration's options added to the ones after ``--`` (each
into a results file of its own in ``--results-dir``, default beside the output), times them, and checks that
both recorded the same cases with the same statuses in the same order and exited alike. Writes the wall
times, their ratio and that check. On the CPU: ``--base "--jobs 1" --spread "--jobs 2"``. Exits 1 when the
two runs disagree.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conformance.codec import read_records, to_json
from conformance.provenance import collect
from conformance.records import CaseRecord


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conformance_speedup",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="--gpus 1", help="options of the run to compare against")
    parser.add_argument("--spread", default="--gpus 2", help="options of the spread run")
    parser.add_argument("--output", type=Path, default=Path("results/conformance-speedup.json"))
    parser.add_argument("--results-dir", type=Path, default=None, help="where the two runs' results go")
    parser.add_argument("conformance", nargs=argparse.REMAINDER, help="-- then the options of both runs")
    return parser.parse_args(argv)


def timed_run(options: list[str], results: Path) -> tuple[float, int, list[tuple[str, str]]]:
    """Wall seconds, exit status and the (id, status) of every case of one conformance run."""
    cmd = [sys.executable, "-m", "conformance.cli", "conformance", *options, "--results", str(results)]
    start = time.perf_counter()
    code = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    seconds = time.perf_counter() - start
    cases = [(r.id, r.status.value) for r in read_records(results) if isinstance(r, CaseRecord)]
    return seconds, code, cases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common = [a for a in args.conformance if a != "--"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    (args.results_dir or args.output.parent).mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, extra in (("base", args.base), ("spread", args.spread)):
        results = (args.results_dir or args.output.parent) / f"{args.output.stem}-{name}.jsonl"
        seconds, code, cases = timed_run(common + shlex.split(extra), results)
        runs[name] = {"options": extra, "seconds": round(seconds, 2), "exit": code, "cases": len(cases),
                      "results": results.name, "_cases": cases}
    same = runs["base"].pop("_cases") == runs["spread"].pop("_cases") and runs["base"]["exit"] == runs["spread"]["exit"]
    doc = {"kind": "conformance-speedup", "provenance": to_json(collect()), "options": common, "runs": runs,
           "speedup": round(runs["base"]["seconds"] / runs["spread"]["seconds"], 3), "same_cases_and_exit": same}
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("runs", "speedup", "same_cases_and_exit")}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
