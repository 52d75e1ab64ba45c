"""Tests of the asv suite (``benchmarks/asv_suite.py``): what asv collects and imports under benchmarks/,
what the suite selects, and that it discovers no backend at import.

No test here checks a speed: figures come from benchmark runs, not from unit tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import benchmarks
from benchmarks.workloads import workloads

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_modules() -> list[str]:
    """Every module under benchmarks/, subpackages included: what asv imports when it discovers the suite."""
    return [info.name for info in pkgutil.walk_packages(benchmarks.__path__, "benchmarks.")]


def test_asv_collects_only_the_suite() -> None:
    """asv collects every ``time_``/``track_``/``mem_``/``peakmem_`` function or class method in every module
    of benchmarks/: only asv_suite.py may have them."""
    pattern = re.compile(r"^(time|track|mem|peakmem|timeraw)_|^(Time|Track|Mem|PeakMem|Timeraw)[A-Z_]")
    for module_name in _benchmark_modules():
        if module_name == "benchmarks.asv_suite":
            continue
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_"):
                continue
            assert not (inspect.isfunction(value) and pattern.match(name)), f"{module_name}.{name}"
            if inspect.isclass(value):
                members = [m for m, _ in inspect.getmembers(value, inspect.isfunction) if pattern.match(m)]
                assert not members, f"{module_name}.{name}: {members}"


def test_asv_discovery_imports_every_module_without_cupy() -> None:
    """asv imports every module under benchmarks/ before it runs anything, in an environment with the
    project's dependencies, torch and triton (asv.conf.json) but not CuPy: one module that needs CuPy at
    import fails the whole asv run."""
    script = ("import importlib, sys\nsys.modules['cupy'] = None\n"
              f"for name in {_benchmark_modules()!r}:\n    importlib.import_module(name)\nprint('imported')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]
    assert "benchmarks.asv_suite" in _benchmark_modules()


def _asv_suite_probe(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` after ``import benchmarks.asv_suite as suite`` in a fresh interpreter (the suite reads
    its environment at import) and return what the code printed as JSON."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSPEC_ASV_")}
    script = "import json\nimport benchmarks.asv_suite as suite\n" + code
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**variables, "CUDA_VISIBLE_DEVICES": "", **env}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


ASV_CLASSES = ("AttentionForward", "AttentionBackward", "AttentionForwardBackward", "KDLoss", "SoftmaxStats",
               "ReduceSum")
LIST_SUITE = f"""
classes = {{name: getattr(suite, name) for name in {ASV_CLASSES!r}}}
print(json.dumps({{name: {{"params": cls.params,
                           "methods": sorted(m for m in dir(cls) if m.startswith(("time_", "track_")))}}
                   for name, cls in classes.items()}}))
"""


def test_asv_import_discovers_no_backend() -> None:
    """Backends are found in ``setup``: a registry that fails at import time does not stop asv listing the
    suite."""
    code = ("import implementations.registry\n"
            "def refuse(*a, **k):\n    raise RuntimeError('discovery at import')\n"
            "implementations.registry.discover = refuse\n")
    script = code + "import benchmarks.asv_suite\nprint('imported')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


def test_asv_default_set_on_the_cpu() -> None:
    """The default CPU set: reference, reference-tiled and torch plus each operation's baseline, no Triton
    interpreter, one workload per operation (two for attention: non-causal and causal), time_call only."""
    suite = _asv_suite_probe(LIST_SUITE)
    assert suite["ReduceSum"]["params"][0] == ["reference", "reference-tiled", "torch", "torch.sum"]
    assert suite["SoftmaxStats"]["params"][0] == ["reference", "reference-tiled", "torch", "torch-eager"]
    for name in ASV_CLASSES:
        backends, labels = suite[name]["params"]
        assert "triton" not in backends and suite[name]["methods"] == ["time_call"]
        assert len(labels) == (2 if name.startswith("Attention") else 1)
    assert suite["AttentionForward"]["params"][1] == ["B1H2-S256-D64-float32", "B1H2-S256-D64-causal-float32"]
    processes = sum(len(b) * len(w) for b, w in (suite[n]["params"] for n in ASV_CLASSES))
    assert processes <= 30  # one process per combination and round: the default set stays within minutes


def test_asv_selection_and_full_table() -> None:
    named = _asv_suite_probe(LIST_SUITE, ATTNSPEC_ASV_BACKENDS="triton")
    assert named["AttentionForward"]["params"][0] == ["reference", "triton"]  # the baseline stays
    assert named["ReduceSum"]["params"][0] == ["torch.sum", "triton"]
    full = _asv_suite_probe(LIST_SUITE, ATTNSPEC_ASV_FULL="1")
    assert full["AttentionForward"]["params"][1] == [f"{w.label}-float32" for w in workloads("attention", "cpu", True)]
    assert full["AttentionForward"]["methods"] == ["time_call", "track_peak_extra_bytes", "track_tflops"]
    assert full["KDLoss"]["methods"] == ["time_call", "track_gbps", "track_peak_extra_bytes"]


def test_asv_setup_skips_what_cannot_run_and_times_cpu_time_single_threaded() -> None:
    """``setup`` raises NotImplementedError (asv: skipped) for a backend that is unavailable here or lacks
    the operation; a runnable one leaves torch at one thread and CPU timing on process time."""
    code = """
import time
import torch
out = {}
label = suite.ReduceSum.params[1][0]
for backend in ("cupy", "torch-eager", "torch.sum"):
    try:
        suite.ReduceSum().setup(backend, label)
        out[backend] = "ran"
    except NotImplementedError as exc:
        out[backend] = "skipped: " + str(exc)
out["threads"] = torch.get_num_threads()
out["timer"] = suite.ReduceSum.timer is time.process_time
print(json.dumps(out))
"""
    out = _asv_suite_probe(code, TRITON_INTERPRET="0")
    assert out["cupy"].startswith("skipped: cupy is unavailable here")
    assert out["torch-eager"] == "skipped: torch-eager does not implement reduce_sum"
    assert out["torch.sum"] == "ran" and out["threads"] == 1 and out["timer"] is True


def test_asv_smoke_run_writes_nothing_into_the_checkout_or_home(tmp_path: Path) -> None:
    """The tox smoke run leaves the user's .asv/results and ~/.asv-machine.json alone (after it, a user's
    ``asv compare`` would otherwise ask which machine to compare)."""
    asv_dir = ROOT / ".asv"
    before = sorted(p.relative_to(ROOT) for p in asv_dir.rglob("*")) if asv_dir.exists() else None
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "ATTNSPEC_ASV_BACKENDS": "torch.sum", "CUDA_VISIBLE_DEVICES": "",
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "asv_smoke.sh"), r"^asv_suite\.ReduceSum\.time_call"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "asv_suite.ReduceSum.time_call" in done.stdout and "torch.sum" in done.stdout
    assert list(home.iterdir()) == []
    after = sorted(p.relative_to(ROOT) for p in asv_dir.rglob("*")) if asv_dir.exists() else None
    assert after == before
