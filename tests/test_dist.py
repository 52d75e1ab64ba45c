"""The DIST chapter through the real CLI on the CPU (gloo): the ring's planted defects are caught, its
defect-free twin passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

MUTANTS = "tests.dist_mutants"


def test_dist_mutants_caught_and_control_passes(tmp_path: Path) -> None:
    """A merge that forgets to rescale fails DIST-1; a ring that all-gathers K and V fails DIST-7 (and passes
    DIST-1: its values are right); the defect-free ring passes both. Exit status 1."""
    results = tmp_path / "dist.jsonl"
    cmd = [sys.executable, "-m", "conformance.cli", "conformance", "--quick", "--clause", "DIST-1",
           "--clause", "DIST-7", "-k", "W2-contiguous or W4", "--results", str(results), "--progress-interval", "60"]
    for factory in ("mutant_ring_no_rescale", "ring_control", "mutant_ring_gathers_kv"):
        cmd += ["--backend", f"{MUTANTS}:{factory}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    statuses: dict[tuple[str, str], set[str]] = {}
    for r in records:
        if r.get("kind") == "case":
            statuses.setdefault((r["backend"], r["clause"]), set()).add(r["status"])
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed" in statuses[("mutant-ring-no-rescale", "DIST-1")], output
    assert statuses[("ring-control", "DIST-1")] == {"passed"}, output
    assert statuses[("ring-control", "DIST-7")] == {"passed"}, output
    assert statuses[("mutant-ring-gathers-kv", "DIST-1")] == {"passed"}, output
    assert statuses[("mutant-ring-gathers-kv", "DIST-7")] == {"failed"}, output
    assert done.returncode == 1, output


def test_ring_benchmark_runs_over_gloo(tmp_path: Path) -> None:
    """benchmarks/ring_bench.py, the GPU step's ring benchmark, on 2 CPU processes over gloo: it writes the
    one-device time, every rank's ring, transfer and computation times, and figures within their ranges."""
    out = tmp_path / "ring.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.ring_bench", "--device", "cpu", "--inner",
                           "reference-tiled", "--seq-len", "256", "--heads", "2", "--head-dim", "16", "--causal",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    assert sorted(doc["per_rank_s"]) == ["0", "1"] and doc["layout"] == "zigzag"
    assert all(t[k] > 0 for t in doc["per_rank_s"].values() for k in ("ring", "comm", "compute"))
    assert doc["one_device_s"] > 0 and doc["scaling_efficiency"] > 0 and 0 <= doc["overlap"] <= 1
