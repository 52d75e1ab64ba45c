"""``attnspec conformance --jobs N`` and ``--shard K/N`` through the real CLI: the same cases and statuses as
one process per backend, in the same order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.dispatch import Slot, Unit, longest_first, run_units
from conformance.sharding import Shard, parse_shard
from tests.conftest import ROOT

#: a quick selection with passing, failing-free cases of two backends and three chapters
SELECTION = ("--quick", "--backend", "reference", "--backend", "reference-tiled", "--clause", "SMX-2",
             "--clause", "WD-1", "--clause", "ATT-4")


def _cli(tmp_path: Path, name: str, *args: str) -> tuple[int, list[dict], str]:
    results = tmp_path / f"{name}.jsonl"
    done = subprocess.run([sys.executable, "-m", "conformance.cli", "conformance", *SELECTION, *args,
                           "--results", str(results)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    return done.returncode, records, done.stdout[-3000:] + done.stderr[-3000:]


def _cases(records: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["backend"], r["id"], r["status"]) for r in records if r.get("kind") == "case"]


def test_jobs_and_shards_give_the_single_process_results(tmp_path: Path) -> None:
    """--jobs 2: the same case records in the same order and the same exit status as --jobs 1; shards 1/2 and
    2/2 (each with --jobs 2) hold disjoint ids that together are exactly the unsharded run's, same statuses."""
    code, records, output = _cli(tmp_path, "one")
    whole = _cases(records)
    assert code == 0 and len(whole) > 10, output
    code2, records2, output2 = _cli(tmp_path, "two", "--jobs", "2")
    assert code2 == code and _cases(records2) == whole, output2
    shards = [_cli(tmp_path, f"shard{k}", "--jobs", "2", "--shard", f"{k}/2") for k in (1, 2)]
    assert [s[0] for s in shards] == [0, 0], shards[0][2] + shards[1][2]
    first, second = (_cases(s[1]) for s in shards)
    assert first and second and not {c[1] for c in first} & {c[1] for c in second}
    assert sorted(first + second) == sorted(whole)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    """--shard 3/2, --shard x, --jobs 0, --gpus none and more GPUs than the host has exit 2 naming the option,
    before any backend runs, and the results file of an earlier run is kept."""
    earlier = tmp_path / "bad.jsonl"
    earlier.write_text('{"kind": "run"}\n')
    for args, named in ((("--shard", "3/2"), "--shard"), (("--shard", "x"), "--shard"), (("--jobs", "0"), "--jobs"),
                        (("--gpus", "none"), "--gpus"), (("--gpus", "64"), "--gpus 64")):
        code, records, output = _cli(tmp_path, "bad", *args)
        assert code == 2 and named in output and records == [{"kind": "run"}], (args, output)


def test_shard_split_is_fixed_and_complete() -> None:
    ids = [f"ATT-1[b-cpu-float32-{i}]" for i in range(200)]
    owners = [[k for k in range(1, 5) if Shard(k, 4).holds(i)] for i in ids]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == {1, 2, 3, 4}
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_units_go_longest_first_and_one_per_slot() -> None:
    """The longest estimate first, emulated backends before others without an estimate; never two units on
    one slot at once."""
    units = [Unit(i, f"b{i}", "f", (f"b{i}",), "ATT", ("ATT",), emulated=(i == 3), estimate_s=est)
             for i, est in enumerate((1.0, 5.0, 0.0, 0.0))]
    assert [u.index for u in longest_first(units)] == [1, 0, 3, 2]
    import threading
    import time

    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()

    def execute(unit: Unit, slot: Slot):  # noqa: ANN202
        with lock:
            running[slot.label] = running.get(slot.label, 0) + 1
            peak[slot.label] = max(peak.get(slot.label, 0), running[slot.label])
        time.sleep(0.05)
        with lock:
            running[slot.label] -= 1
        return None

    run_units(longest_first(units) * 3, [Slot("a", {}), Slot("b", {})], execute, threading.Event())
    assert peak == {"a": 1, "b": 1}


def test_dist_units_hold_every_gpu() -> None:
    """On GPU slots a DIST unit (of a backend implementing the operation) runs alone and its child sees every
    GPU (no CUDA_VISIBLE_DEVICES of its own); other units get one GPU each."""
    import threading
    import time

    units = [Unit(i, f"b{i}", "f", (f"b{i}",), area, (area,), all_devices=area == "DIST")
             for i, area in enumerate(("ATT", "DIST", "SMX", "KD"))]
    log: list[tuple[str, str, float, float]] = []

    def execute(unit: Unit, slot: Slot):  # noqa: ANN202
        start = time.monotonic()
        time.sleep(0.1)
        log.append((unit.area, slot.env.get("CUDA_VISIBLE_DEVICES", "all"), start, time.monotonic()))

    slots = [Slot("GPU 0", {"CUDA_VISIBLE_DEVICES": "0"}), Slot("GPU 1", {"CUDA_VISIBLE_DEVICES": "1"})]
    run_units(units, slots, execute, threading.Event())
    dist = next(entry for entry in log if entry[0] == "DIST")
    assert dist[1] == "all"
    assert all(e[3] <= dist[2] or e[2] >= dist[3] for e in log if e[0] != "DIST"), log
    assert {e[1] for e in log if e[0] != "DIST"} <= {"0", "1"}


def test_sigterm_stops_a_spread_run_and_keeps_its_records(tmp_path: Path) -> None:
    """SIGTERM to ``attnspec conformance --jobs 2``: the case in flight is recorded interrupted in the merged
    results file, the children die, and the exit status is 143, as with one process per backend."""
    import signal

    from tests.test_runner import CLAUSE, _gone, _wait_for_case_in_flight, cases

    results = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "conformance.cli", "conformance", "--jobs", "2", "--backend",
                             "tests.hostile:hangs_first", "--results", str(results), *CLAUSE],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child = _wait_for_case_in_flight(results.parent / "parts" / results.stem / "part-000.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in out, out
    assert cases(results)["WD-0[hangs-first-cpu-float32-1x1]"]["status"] == "interrupted"
    assert _gone(child)


def _bench(tmp_path: Path, name: str, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", "reports.command", "bench", "--quick", "--backend", "reference",
                           "--op", "reduce_sum", "--op", "softmax_stats", "--output", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return done.returncode, json.loads(out.read_text()) if out.exists() else {}, done.stdout + done.stderr


def test_bench_jobs_gives_the_records_of_one_process(tmp_path: Path) -> None:
    """attnspec bench --jobs 2: one process per operation, merged in operation order: the same records (op,
    backend, workload, gate) as one process, the same backend listing in one process's order (the operations
    are asked for in an order other than the listing's: reduce_sum's baseline torch.sum is listed after
    softmax_stats' torch-eager), finished; --gpus on a host without that many GPUs exits 2 naming it."""
    code, one, output = _bench(tmp_path, "one")
    code2, two, output2 = _bench(tmp_path, "two", "--jobs", "2")
    assert code == code2 == 0, output + output2

    def rows(doc: dict) -> list[tuple]:
        return [(r["op"], r["backend"], r["workload"], r["gate"]) for r in doc["records"]]

    assert rows(two) == rows(one) and rows(one)
    names = [b["name"] for b in two["backends"]]
    assert names == [b["name"] for b in one["backends"]] == ["reference", "torch-eager", "torch.sum"]
    assert two["finished"] and not two["interrupted"] and len(two["parts"]) == 2
    code3, _, output3 = _bench(tmp_path, "gpus", "--gpus", "64")
    assert code3 == 2 and "--gpus 64" in output3, output3


def test_plan_units_in_matrix_order_with_estimates(tmp_path: Path) -> None:
    """One unit per backend child and chapter (only the chapters of --clause), in pytest's module order; the
    estimate sums the durations of the replaced file's cases, read as the run reads it, by the area of their
    clause (a record without ``area``, as packed evidence has them, counts by its clause); only a backend
    implementing the DIST operation needs every GPU."""
    from conformance.codec import read_records
    from conformance.dispatch import plan
    from conformance.probe import Listing

    ring = Listing("ring", "built-in", "m:ring", operations=("attention_context_parallel",))
    plain = Listing("plain", "built-in", "m:plain", operations=("attention",), capabilities={"emulated": True})
    replaced = tmp_path / "conformance.jsonl.previous"
    replaced.write_text("".join(json.dumps(r) + "\n" for r in [
        {"kind": "case", "id": "ATT-1[plain-cpu]", "backend": "plain", "clause": "ATT-1", "status": "passed",
         "duration": 2.5},
        {"kind": "case", "id": "ATT-2[plain-cpu]", "backend": "plain", "area": "ATT", "clause": "ATT-2",
         "status": "failed", "duration": 1.0},
        {"kind": "case", "id": "KD-1[plain-cpu]", "backend": "plain", "clause": "KD-1", "status": "passed",
         "duration": 9.0}]))
    units = plan({"ring": [ring], "plain": [plain]}, ["ATT-4", "DIST"], read_records(replaced), tmp_path)
    assert [(u.names, u.area, u.clauses, u.all_devices, u.estimate_s, u.emulated) for u in units] == [
        (("ring",), "ATT", ("ATT-4",), False, 0.0, False), (("ring",), "DIST", ("DIST",), True, 0.0, False),
        (("plain",), "ATT", ("ATT-4",), False, 3.5, True), (("plain",), "DIST", ("DIST",), False, 0.0, True)]
    assert [u.names[0] + u.area for u in longest_first(units)] == ["plainATT", "plainDIST", "ringATT", "ringDIST"]
