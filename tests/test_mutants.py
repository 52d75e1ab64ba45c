"""Every mutant backend must fail the clause meant to catch it; its defect-free twin must pass it."""

from __future__ import annotations

import pytest

from tests.mutants import MUTANTS


def _statuses(records: list[dict], clause: str) -> list[str]:
    return [r["status"] for r in records if r.get("kind") == "case" and r["clause"] == clause]


@pytest.mark.parametrize("defect", sorted(MUTANTS))
def test_mutant_is_caught(conformance_run, defect: str) -> None:
    node, clause = MUTANTS[defect]
    code, records, output = conformance_run(node, "--quick", "--backend", f"tests.mutants:mutant_{defect}")
    statuses = _statuses(records, clause)
    assert statuses, f"no {clause} case ran for mutant {defect}:\n{output[-3000:]}"
    assert "failed" in statuses, f"mutant {defect} was not caught by {clause}: {statuses}\n{output[-3000:]}"
    assert code == 1


@pytest.mark.parametrize("node,clause", sorted(set(MUTANTS.values())))
def test_control_passes(conformance_run, node: str, clause: str) -> None:
    code, records, output = conformance_run(node, "--quick", "--backend", "tests.mutants:control")
    statuses = _statuses(records, clause)
    assert statuses and set(statuses) <= {"passed", "unsupported"}, f"{statuses}\n{output[-3000:]}"
    assert "passed" in statuses
    assert code == 0
