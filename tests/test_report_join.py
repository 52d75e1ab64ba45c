"""``attnspec report`` joins the shards of one machine's run into one column; other machines keep theirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reports.load import result_sets
from tests.conftest import ROOT
from tests.test_report import GPU_PROVENANCE, PROVENANCE, case, write_jsonl


def _shard(path: Path, provenance: dict, cases: list[dict], started: str) -> Path:
    run = {"kind": "run", "run_id": path.stem, "started": started, "provenance": {**provenance, "timestamp": started},
           "argv": [], "quick": True, "shard": "1/2", "backends": [{"name": "torch", "origin": "built-in",
                                                                      "available": True, "reason": None}]}
    return write_jsonl(path, [run, *cases, {"kind": "end", "run_id": path.stem, "ended": "completed"}])


def test_shards_of_one_machine_join_and_machines_stay_apart(tmp_path: Path) -> None:
    """Two shard files of one host and commit are one set holding both shards' cases, dated by the earlier
    start; a file of another host is a set of its own; the same --label joins files whatever their host."""
    a1 = _shard(tmp_path / "a1.jsonl", PROVENANCE, [case("torch", "ATT-1", "passed", 0)], "2025-01-02T05:00:00Z")
    a2 = _shard(tmp_path / "a2.jsonl", PROVENANCE, [case("torch", "ATT-2", "failed", 1)], "2025-01-02T04:00:00Z")
    b = _shard(tmp_path / "b.jsonl", GPU_PROVENANCE, [case("torch", "ATT-1", "passed", 2)], "2025-01-02T04:00:00Z")
    sets = result_sets([a1, b, a2], [], [])
    assert [rs.label for rs in sets] == [f"{PROVENANCE['cpu']} ({PROVENANCE['hostname']})",
                                         f"{GPU_PROVENANCE['gpu']} ({GPU_PROVENANCE['hostname']})"]
    joined = sets[0].conformance
    assert sorted((c.clause, c.status.value) for c in joined.cases) == [("ATT-1", "passed"), ("ATT-2", "failed")]
    assert joined.provenance.timestamp == "2025-01-02T04:00:00Z" and joined.runs == 2 and joined.finished
    labelled = result_sets([a1, b], [], ["all", "all"])
    assert [rs.label for rs in labelled] == ["all"] and len(labelled[0].conformance.cases) == 2


def test_report_cli_builds_one_column_per_machine(tmp_path: Path) -> None:
    """Through ``attnspec report``: the page names each machine once, with its provenance."""
    a1 = _shard(tmp_path / "a1.jsonl", PROVENANCE, [case("torch", "ATT-1", "passed", 0)], "2025-01-02T05:00:00Z")
    a2 = _shard(tmp_path / "a2.jsonl", PROVENANCE, [case("torch", "ATT-2", "passed", 1)], "2025-01-02T04:00:00Z")
    b = _shard(tmp_path / "b.jsonl", GPU_PROVENANCE, [case("torch", "ATT-1", "passed", 2)], "2025-01-02T04:00:00Z")
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "reports.command", "report", "--conformance", str(a1), str(a2),
                           str(b), "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    html = (out / "index.html").read_text()
    prov = html[html.index('id="provenance"'):]
    assert prov.count(PROVENANCE["hostname"]) >= 1 and GPU_PROVENANCE["hostname"] in prov
    assert f"{PROVENANCE['cpu']} ({PROVENANCE['hostname']}) #2" not in html
