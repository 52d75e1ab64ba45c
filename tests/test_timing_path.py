"""One timing path: ``attnspec bench``, pytest-benchmark and asv read one workload table and time a call
through ``benchmarks.timing``, not through timing code of their own."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import test_bench_pytest
from benchmarks.timing import l2_flusher, synchronized

ROOT = Path(__file__).resolve().parent.parent
FRONT_ENDS = {"bench.py": {"measure_ceilings", "timing_for"}, "asv_suite.py": {"synchronized", "timing_for"},
              "test_bench_pytest.py": {"l2_flusher", "synchronized"}}
#: what timing code of its own would call
CLOCKS = {"synchronize", "perf_counter", "Event", "process_time", "elapsed_time"}


def _tree(name: str) -> ast.Module:
    return ast.parse((ROOT / "benchmarks" / name).read_text())


def _imports_from(tree: ast.Module, module: str) -> set[str]:
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == module for a in n.names}


def test_front_ends_share_the_table_and_the_timing_functions() -> None:
    for name, timing in FRONT_ENDS.items():
        tree = _tree(name)
        assert "workloads" in _imports_from(tree, "benchmarks.workloads"), name
        assert _imports_from(tree, "benchmarks.timing") == timing, name
        called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert called & CLOCKS == set(), f"{name} times calls itself: {called & CLOCKS}"


def test_the_check_sees_a_clock_of_its_own() -> None:
    tree = ast.parse("import time\ndef f(call):\n    t0 = time.perf_counter()\n    call()\n")
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert called & CLOCKS == {"perf_counter"}


def test_a_synchronized_call_calls_once_and_the_cpu_flush_does_nothing() -> None:
    calls: list[int] = []
    timed = synchronized(lambda: calls.append(1), "cpu")
    assert timed() is None and timed() is None and calls == [1, 1]
    assert l2_flusher("cpu")() is None


def test_pytest_benchmark_times_rounds_of_one_synchronized_call(tmp_path: Path) -> None:
    """The pytest-benchmark module gates, then times ROUNDS rounds of one call each."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "benchmarks/test_bench_pytest.py", "-k", "reduce_sum-torch.sum", "--benchmark-only",
                           f"--benchmark-json={out}"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
                               "CUDA_VISIBLE_DEVICES": ""})  # an xdist worker's variables disable pytest-benchmark
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads(out.read_text())["benchmarks"]
    assert result["stats"]["rounds"] == test_bench_pytest.ROUNDS and result["stats"]["iterations"] == 1
    assert result["extra_info"]["op"] == "reduce_sum" and result["extra_info"]["gbps"] > 0
