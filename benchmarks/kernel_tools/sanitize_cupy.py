"""compute-sanitizer over every kernel of the cupy backend: one tiny call of each, under each tool.

Usage on a GPU machine with CuPy and compute-sanitizer on PATH, from the repository root:
    python -m benchmarks.kernel_tools.sanitize_cupy --out sanitize.json [--tools memcheck,racecheck]
runs ``compute-sanitizer --tool TOOL python -m benchmarks.kernel_tools.sanitize_cupy --calls`` once per tool
(default memcheck, racecheck, synccheck, initcheck) with PYTORCH_NO_CUDA_MEMORY_CACHING=1: without torch's
caching allocator every tensor is its own allocation, so memcheck sees an out-of-bounds access that would
otherwise land inside a cached block. It records per tool the errors the sanitizer counted, its exit status,
the calls that ran and the first lines of its report, and exits 1 when a tool found an error or a run did not
reach its last call. ``--calls`` alone makes the calls without a sanitizer (a ``call:`` line each, then
``calls: done``).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.kernel_tools.limited import run_limited
from conformance.interrupts import interruptible

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
CALL = "call: "
DONE = "calls: done"
#: the sanitizer's closing line: ``========= ERROR SUMMARY: 3 errors``, and racecheck's
#: ``========= RACECHECK SUMMARY: 2 hazards displayed (1 errors, 1 warnings)`` (error, warning counts)
ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?")
RACECHECK_SUMMARY = re.compile(r"RACECHECK SUMMARY: .*\((\d+) errors?, (\d+) warnings?\)")
#: report lines kept per tool when it found something
KEPT_LINES = 60


def say(line: str) -> None:
    """One call's line: what it ran and whether its outputs are finite."""
    print(CALL + line, flush=True)


def _attention_calls(be, dev: str) -> None:  # noqa: ANN001
    """``attn_fwd``, ``attn_delta``, ``attn_bwd_dkdv``, ``attn_bwd_dq``: element loads (D 59), 16-byte loads,
    D 256 and 128, both causal alignments, a sliding window, and packed sequences of lengths 0 to 70."""
    cases = [  # B, Hq, Hk, Sq, Sk, D, causal, window
        (1, 2, 1, 33, 47, 59, "bottom_right", None),
        (1, 2, 2, 70, 20, 64, "bottom_right", None),
        (1, 2, 1, 17, 9, 256, "top_left", None),
        (1, 1, 1, 65, 130, 128, None, None),
        (1, 4, 2, 70, 90, 64, "bottom_right", (20, 3)),
        (1, 2, 1, 40, 100, 128, None, (-1, 7)),
    ]
    for B, Hq, Hk, Sq, Sk, D, causal, window in cases:
        q = torch.randn(B, Hq, Sq, D, device=dev, dtype=torch.bfloat16)
        k, v = (torch.randn(B, Hk, Sk, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
        out, lse = be.attention(q, k, v, causal=causal, window=window)
        grads = be.attention_backward(q, k, v, out, lse, torch.randn_like(out), causal=causal, window=window)
        torch.cuda.synchronize()
        say(f"attention fwd+bwd B{B} H{Hq}/{Hk} {Sq}x{Sk} D{D} {causal} window {window}: finite "
            f"{all(bool(torch.isfinite(x).all()) for x in (out, *grads))}")
    lens_q, lens_k = [5, 0, 70, 33], [9, 4, 40, 0]
    cu_q, cu_k = (torch.tensor([0, *np.cumsum(n)], dtype=torch.int32, device=dev) for n in (lens_q, lens_k))
    q, dout = (torch.randn(sum(lens_q), 4, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(sum(lens_k), 2, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))
    for causal, window in ((None, None), ("bottom_right", (16, -1))):
        out, lse = be.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, window=window)
        grads = be.attention_varlen_backward(q, k, v, out, lse, dout, cu_q, cu_k, max(lens_q), max(lens_k),
                                             causal=causal, window=window)
        torch.cuda.synchronize()
        say(f"varlen fwd+bwd q {lens_q} k {lens_k} {causal} window {window}: finite "
            f"{all(bool(torch.isfinite(x).all()) for x in (out, *grads))}")


def _decode_calls(be, dev: str) -> None:  # noqa: ANN001
    """``decode_split`` in each layout (16 threads x 4 rows, 8 x 8, 32 x 1, element loads) and ``decode_merge``:
    pages in shuffled order, lengths of one key, a page + 1 and no multiple of the page, empty splits."""
    cases = [  # lens, page, Hq, Hk, Sq, D, dtype, splits, padded_d
        ([1, 17, 300], 16, 8, 2, 1, 128, torch.bfloat16, None, 0),
        ([16, 70], 16, 16, 2, 16, 64, torch.float16, 3, 0),
        ([5, 100], 64, 4, 4, 1, 256, torch.float32, None, 0),
        ([20, 150], 16, 4, 2, 2, 128, torch.bfloat16, 16, 0),
        ([7, 50], 7, 6, 2, 4, 100, torch.bfloat16, 5, 0),
        ([30, 90], 64, 8, 8, 1, 128, torch.float16, None, 4),
    ]
    for lens, page, Hq, Hk, Sq, D, dtype, splits, padded_d in cases:
        per_seq = -(-max(lens) // page)
        pool = len(lens) * per_seq
        table = torch.randperm(pool, device=dev).to(torch.int32).view(len(lens), per_seq)
        k_pages, v_pages = (torch.randn(pool, page, Hk, D + padded_d, device=dev).to(dtype)[..., :D]
                            for _ in range(2))
        q = torch.randn(len(lens), Hq, Sq, D, device=dev).to(dtype)
        kv_lens = torch.tensor(lens, dtype=torch.int32, device=dev)
        out, lse = be.attention_decode_paged(q, k_pages, v_pages, table, kv_lens, num_splits=splits)
        torch.cuda.synchronize()
        say(f"decode lens {lens} page {page} H{Hq}/{Hk} Sq{Sq} D{D} {dtype} splits {splits} padded {padded_d}: "
            f"finite {bool(torch.isfinite(out).all() and torch.isfinite(lse).all())}")


def _row_calls(be, dev: str) -> None:  # noqa: ANN001
    """``softmax_stats`` (both modes), ``softmax_merge``, ``kd_scale``/``kd_part``/``kd_finalize`` (16-byte and
    scalar loads, several parts per row, masked teacher logits, labels) and both ``reduce_sum_f32`` launches."""
    x = torch.randn(3, 1001, device=dev)
    for block in (None, 37):
        be.softmax_stats(x, block=block)
    be.softmax_stats(torch.randn(2, 1024, device=dev, dtype=torch.float16))
    m, l = be.softmax_stats(x)
    be.softmax_merge(m, l, m.flip(0), l.flip(0))
    torch.cuda.synchronize()
    say("softmax_stats, softmax_merge: ok")
    multi = type(be)()
    multi.kd_part_cols = 64  # 5 parts of kd_part per row at V = 300 (the last one of 44 columns)
    kd_cases = [  # backend, V, dtype, labelled (16-byte loads at 1024, 5000 and 300, scalar loads at 1001)
        (be, 1001, torch.float32, True),
        (be, 1024, torch.float32, False),
        (be, 5000, torch.bfloat16, True),
        (multi, 300, torch.float32, True),
    ]
    for kd_be, V, dtype, labelled in kd_cases:
        s, t = torch.randn(4, V, device=dev).to(dtype), torch.randn(4, V, device=dev).to(dtype)
        t[0, : V // 2] = -math.inf  # a counted row whose teacher logits start masked
        labels = torch.tensor([0, -100, V - 1, 5], device=dev) if labelled else None
        loss, ds = kd_be.kd_loss(s, t, temperature=2.0, alpha=0.5 if labelled else 1.0, labels=labels)
        torch.cuda.synchronize()
        say(f"kd_loss V={V} {dtype} labelled={labelled} part={kd_be.kd_part_cols}: loss {float(loss):.4f}, "
            f"ds finite {bool(torch.isfinite(ds).all())}")
    value, sched = be.reduce_sum(torch.randn(5000, device=dev))
    say(f"reduce_sum n=5000: {float(value):.4f} ({sched.kind})")


def run_calls() -> None:
    """One tiny call of every kernel of the cupy backend, a line each, then ``DONE``."""
    from implementations.cupy import backends  # needs CuPy and a GPU

    be = backends()
    torch.manual_seed(0)
    for calls in (_attention_calls, _decode_calls, _row_calls):
        calls(be, "cuda")
    print(DONE, flush=True)


def sanitize(tool: str, seconds: float) -> dict[str, object]:
    """The calls under ``compute-sanitizer --tool tool``: the errors its summaries count (the largest; None when
    it printed no summary), racecheck's warnings (hazards it does not count as errors), the exit status (None
    when stopped at ``seconds``), the calls that ran, whether the last one was reached, the seconds taken, and
    the first lines of its report when it found something or did not finish."""
    command = ["compute-sanitizer", "--tool", tool, sys.executable, "-m", "benchmarks.kernel_tools.sanitize_cupy",
               "--calls"]
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    start = time.monotonic()
    done = run_limited(command, seconds, env)
    text, status = done.stdout + done.stderr, done.returncode
    lines = text.splitlines()
    errors = [int(n) for n in ERROR_SUMMARY.findall(text)]
    warnings = []
    for race_errors, race_warnings in RACECHECK_SUMMARY.findall(text):
        errors.append(int(race_errors))
        warnings.append(int(race_warnings))
    record: dict[str, object] = {
        "tool": tool, "command": " ".join(command), "errors": max(errors, default=None),
        "warnings": max(warnings, default=0),
        "exit_status": status, "finished": DONE in lines,
        "calls": [line.removeprefix(CALL) for line in lines if line.startswith(CALL)],
        "seconds": round(time.monotonic() - start, 1)}
    if not record["finished"]:  # the output's end: the traceback, or where the run was stopped
        record["report"] = lines[-KEPT_LINES:]
    elif record["errors"] != 0 or record["warnings"]:  # the sanitizer's first findings
        record["report"] = [line for line in lines if line.startswith("=========")][:KEPT_LINES]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", action="store_true", help="make the calls only (what runs under the sanitizer)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {', '.join(TOOLS)}")
    parser.add_argument("--out", type=Path, default=Path("sanitize.json"))
    parser.add_argument("--seconds", type=float, default=300, help="limit of each tool's run")
    args = parser.parse_args()
    interruptible()
    if args.calls:
        run_calls()
        return
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    tools = args.tools.split(",")
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    if shutil.which("compute-sanitizer") is None:
        parser.error("compute-sanitizer is not on PATH (it comes with the CUDA toolkit)")
    from benchmarks.kernel_tools.bench_triton import Recorder

    rec = Recorder(args.out)
    clean = True
    for tool in tools:
        try:
            record = sanitize(tool, args.seconds)
        except KeyboardInterrupt:  # the step's limit: the sanitizer's session is gone, record and stop
            rec.put(tool, {"tool": tool, "errors": None, "finished": False, "interrupted": True})
            sys.exit(1)
        rec.put(tool, record)
        clean = clean and record["errors"] == 0 and not record["warnings"] and bool(record["finished"])
        print(f"{tool}: {record['errors']} errors, {record['warnings']} warnings, exit status {record['exit_status']}, "
              f"{len(record['calls'])} calls, finished {record['finished']}, {record['seconds']} s", flush=True)
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
