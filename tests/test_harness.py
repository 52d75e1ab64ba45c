"""Tests of the harness itself: tolerance rule, oracle, schedules, clause coverage, registry, isolation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conformance import spec
from conformance.codec import done_ids, dumps, read_records
from conformance.deviations import read_xfails
from conformance.memory import loglog_slope
from conformance.records import CaseRecord, CaseStart
from conformance.results import Status
from conformance.spec import CLAUSES, SPEC_PATH, parse_spec
from conformance.supervisor import in_flight, run_backend
from conformance.tolerance import compare, max_abs_err
from implementations import schedule as sched
from implementations.ops import OPS
from implementations.ops import attention as attention_op
from implementations.registry import discover, select

ROOT = Path(__file__).resolve().parent.parent


# -- tolerance rule -----------------------------------------------------------------------------

def test_nan_where_oracle_finite_fails() -> None:
    oracle_t = torch.ones(4)
    assert max_abs_err(torch.tensor([1.0, float("nan"), 1.0, 1.0]), oracle_t) == math.inf
    assert not compare("out", torch.tensor([1.0, float("nan"), 1, 1]), oracle_t, oracle_t).passed


def test_infinities_must_match() -> None:
    ref = torch.tensor([float("-inf"), 0.5])
    assert max_abs_err(torch.tensor([float("-inf"), 0.5]), ref) == 0.0
    assert max_abs_err(torch.tensor([0.0, 0.5]), ref) == math.inf


def test_rule_scales_with_the_naive_error() -> None:
    ref = torch.zeros(8, dtype=torch.float64) + 1.0
    naive = ref + 1e-3
    assert compare("out", ref + 1.9e-3, ref, naive, dtype=torch.float32).passed
    assert not compare("out", ref + 2.1e-3, ref, naive, dtype=torch.float32).passed
    assert compare("dq", ref + 2.9e-3, ref, naive, dtype=torch.float32).passed  # multiplier 3


def test_floor_allows_a_few_ulps_only() -> None:
    ref = torch.ones(4, dtype=torch.float64)
    eps = torch.finfo(torch.float64).eps
    assert compare("out", ref + eps, ref, ref, dtype=torch.float64).passed
    assert not compare("out", ref + 1e-10, ref, ref, dtype=torch.float64).passed


# -- oracle -------------------------------------------------------------------------------------

def test_oracle_kd_equals_kl_div_batchmean_on_rows() -> None:
    """KD-1's identity, and the two classic mistakes it names."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 50, generator=g, dtype=torch.float64), torch.randn(2, 3, 50, generator=g,
                                                                                dtype=torch.float64)
    T = 2.5
    loss, _ = OPS["kd_loss"].oracle(s, t, temperature=T)
    rows = lambda x: x.reshape(-1, 50) / T  # noqa: E731
    batchmean = F.kl_div(F.log_softmax(rows(s), -1), F.log_softmax(rows(t), -1), log_target=True,
                         reduction="batchmean") * T * T
    assert torch.allclose(loss, batchmean, rtol=1e-12)
    with pytest.warns(UserWarning):  # torch itself warns that "mean" is not the KL divergence
        mean = F.kl_div(F.log_softmax(rows(s), -1), F.log_softmax(rows(t), -1), log_target=True,
                        reduction="mean")
    assert torch.allclose(mean * T * T * 50, loss, rtol=1e-12)  # "mean" is off by a factor V
    unflattened = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                           reduction="batchmean") * T * T
    assert torch.allclose(unflattened, loss * 3, rtol=1e-12)  # [B, L, V] batchmean divides by B only


def test_oracle_masked_rows_and_alignment() -> None:
    vis = attention_op.visibility(3, 5, "bottom_right")
    assert vis.tolist()[0] == [True, True, True, False, False]
    vis = attention_op.visibility(5, 3, "bottom_right")
    assert not vis[0].any() and not vis[1].any() and vis[2, 0]
    q = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    k = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    out, lse = OPS["attention"].oracle(q, k, k, causal="bottom_right", scale=0.5)
    assert torch.all(out[0, 0, :2] == 0) and torch.all(lse[0, 0, :2] == float("-inf"))
    assert not torch.isnan(out).any()


def test_naive_differs_from_oracle_by_rounding_only() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 33, 16, generator=g, dtype=torch.float64) for _ in range(3))
    ref = OPS["attention"].oracle(q, k, v, causal="top_left", scale=0.3)
    naive = OPS["attention"].naive(q, k, v, causal="top_left", scale=0.3, dtype=torch.float64)
    for a, b in zip(ref, naive):
        assert torch.allclose(a, b, atol=1e-13) and not torch.equal(a, b)


# -- schedules (WD) -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 63, 64, 65, 1000])
def test_tree_measures(n: int) -> None:
    for tree in (sched.pairwise_tree(n), sched.halving_tree(n)):
        tree.validate()
        assert tree.work == n - 1
        assert tree.depth == (math.ceil(math.log2(n)) if n > 1 else 0)
    assert sched.sequential(n).depth == n - 1


@pytest.mark.parametrize("n", [2, 8, 64, 1024])
def test_scan_measures(n: int) -> None:
    log = int(math.log2(n))
    hs = sched.hillis_steele_scan(n)
    assert (hs.work, hs.depth) == (n * log - (n - 1), log)
    assert (sched.sequential_scan(n).work, sched.sequential_scan(n).depth) == (n - 1, n - 1)
    x = np.random.default_rng(0).standard_normal(n)
    assert np.allclose(hs.evaluate(x, np.float64), np.cumsum(x))


def test_wd1_example() -> None:
    tree = sched.pairwise_tree(64)
    assert (tree.work, tree.depth) == (63, 6)


@pytest.mark.parametrize("n,p", [(64, 4), (1000, 8), (1000, 3), (17, 17)])
def test_blocked_and_brent(n: int, p: int) -> None:
    s = sched.blocked(n, p)
    s.validate()
    assert s.work == n - 1
    assert s.depth == math.ceil(n / p) - 1 + math.ceil(math.log2(p))
    for procs in (1, 2, 4, 8, 64):
        assert s.greedy_time(procs) <= s.work / procs + s.depth
    assert s.greedy_time(10**6) == s.depth  # unbounded processors: exactly the depth


def test_schedule_evaluation_is_order_sensitive() -> None:
    x = np.array([1e8, 1.0, -1e8, 1.0], dtype=np.float32)
    assert sched.sequential(4).evaluate(x) != sched.pairwise_tree(4).evaluate(x)


def test_deferred_schedule_builds_once_on_first_use() -> None:
    """A DeferredSchedule knows n at once, builds its schedule on the first read only, and then has the kind,
    result, measures and evaluation of the schedule it defers; one built over another n is refused."""
    built = []

    def build() -> sched.Schedule:
        built.append(1)
        return sched.pairwise_tree(100)

    lazy = sched.DeferredSchedule(100, build)
    assert (lazy.n, built) == (100, [])
    eager = sched.pairwise_tree(100)
    x = np.random.default_rng(1).standard_normal(100).astype(np.float32)
    assert (lazy.kind, lazy.result, lazy.work, lazy.depth) == (eager.kind, eager.result, eager.work, eager.depth)
    assert lazy.evaluate(x).tobytes() == eager.evaluate(x).tobytes() and built == [1]
    lazy.validate()
    with pytest.raises(ValueError, match="over 5 inputs built one over 100"):
        _ = sched.DeferredSchedule(5, build).rounds


def test_invalid_schedule_is_rejected() -> None:
    bad = sched.Schedule(4, "bad", [(np.array([0, 1]), np.array([0, 1]), np.array([1, 2]))], 0)
    with pytest.raises(ValueError, match="read and written"):
        bad.validate()


def test_loglog_slope() -> None:
    xs = [1.0, 2.0, 4.0, 8.0]
    assert loglog_slope(xs, [x * x * 1000 for x in xs]) == pytest.approx(2.0)
    assert loglog_slope(xs, [x * 1000 for x in xs]) == pytest.approx(1.0)


# -- the spec as code -----------------------------------------------------------------------------

def test_every_clause_has_a_test_with_a_docstring() -> None:
    found = spec.tests_by_clause()
    missing = [c for c, tests in found.items() if not tests]
    assert not missing, f"clauses without a test: {missing}"
    undocumented = [name for tests in found.values() for name, doc in tests if not doc]
    assert not undocumented
    assert len(CLAUSES) == 62


def test_shipped_spec_matches_shared_spec() -> None:
    shared = ROOT.parent / "shared" / "SPEC.md"
    if not shared.exists():
        pytest.skip("no ../shared/SPEC.md beside this checkout")
    first = parse_spec(shared.read_text(encoding="utf-8"))
    shipped = parse_spec(SPEC_PATH.read_text(encoding="utf-8"))
    assert {cid: shipped.get(cid) for cid in first} == first  # chapters added since keep the first ones intact


# -- registry ---------------------------------------------------------------------------------

def test_env_and_spec_backends_are_registered() -> None:
    entries = discover(["tests.thirdparty:missing_gpu", "tests.thirdparty:broken"],
                       env={"ATTNSPEC_BACKENDS": "tests.thirdparty:good"})
    by_name = {e.name: e for e in entries}
    assert by_name["thirdparty-sum"].available
    assert by_name["tests.thirdparty:missing_gpu"].unavailable == "needs a GPU that is not here"
    assert "factory exploded" in by_name["tests.thirdparty:broken"].unavailable
    assert by_name["reference"].available
    with pytest.raises(ValueError, match="no backend named"):
        select(entries, ["nonexistent"])


def test_entry_point_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "thirdparty_attn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-attn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attnspec.backends]\nthirdparty = tests.thirdparty:good\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = [e for e in discover() if e.origin.startswith("entry point")]
    assert [e.name for e in entries] == ["thirdparty-sum"] and entries[0].available


def test_cli_lists_a_spec_backend() -> None:
    done = subprocess.run([sys.executable, "-m", "conformance.cli", "backends", "--backend", "tests.thirdparty:good"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "thirdparty-sum" in done.stdout and "reference-tiled" in done.stdout


def test_third_party_backend_gets_verdicts(conformance_run) -> None:
    code, records, output = conformance_run("conformance/test_work_depth.py", "--backend", "tests.thirdparty:good",
                                            "--quick")
    cases = [r for r in records if r.get("kind") == "case"]
    assert {r["backend"] for r in cases} == {"thirdparty-sum"}
    assert {r["status"] for r in cases} == {"unsupported", "not_implemented"}, output[-2000:]
    assert any("does not declare its combine schedule" in (r["reason"] or "") for r in cases)


# -- results, xfails, isolation -------------------------------------------------------------------

def test_truncated_results_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    done = CaseRecord("A[b-cpu]", "A", "b", "cpu", Status.PASSED)
    path.write_text(dumps(done) + "\n" + dumps(CaseStart("B[b-cpu]", "B", "b", "cpu"))[:30])
    assert done_ids(path) == {"A[b-cpu]"}
    assert read_records(path) == [done]


def test_xfails_file(tmp_path: Path, conformance_run) -> None:
    xfails = tmp_path / "x.txt"
    xfails.write_text("WD-2[control-cpu-float32-1x7]  # planted\nATT-99[nothing*]  # matches nothing\n")
    assert read_xfails([str(xfails)])["WD-2[control-cpu-float32-1x7]"] == "planted"
    code, records, output = conformance_run("conformance/test_work_depth.py::test_kernel_follows_schedule",
                                            "--backend", "tests.mutants:control", "--quick",
                                            "--xfails-file", str(xfails))
    statuses = {r["id"]: r["status"] for r in records if r.get("kind") == "case"}
    assert statuses["WD-2[control-cpu-float32-1x7]"] == "xpass"
    assert "matches no test" in output


def test_crash_and_hang_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    run = run_backend("tests.thirdparty:crashy", results, ["--quick", "-k", "test_model_measures"],
                      case_timeout=5, log_dir=tmp_path)
    records = read_records(results)
    cases = {r.id: r for r in records if isinstance(r, CaseRecord)}
    assert cases["WD-0[crashy-cpu-float32-1x7]"].status is Status.CRASHED
    assert "SIGABRT" in cases["WD-0[crashy-cpu-float32-1x7]"].reason
    assert cases["WD-0[crashy-cpu-float32-1x100]"].status is Status.TIMEOUT
    started = {r.id for r in records if isinstance(r, CaseStart)}
    assert len(cases) >= 7 and set(cases) == started, sorted(cases)  # every size has a result: the run went on
    assert run.restarts == 2
    assert in_flight(records, run.run_id) is None


def test_cli_hands_bench_and_report_options_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """`attnspec bench --quick ...` reaches the benchmark's own parser untouched (argparse's REMAINDER
    would refuse a remainder that starts with an option)."""
    import benchmarks.bench
    import reports.build
    from reports import command

    seen = {}
    monkeypatch.setattr(benchmarks.bench, "main", lambda argv: seen.setdefault("bench", argv) and 0)
    monkeypatch.setattr(reports.build, "main", lambda argv: seen.setdefault("report", argv) and 0)
    assert command.main(["bench", "--quick", "--op", "kd_loss"]) == 0
    assert command.main(["report", "--conformance", "x.jsonl"]) == 0
    assert seen == {"bench": ["--quick", "--op", "kd_loss"], "report": ["--conformance", "x.jsonl"]}
