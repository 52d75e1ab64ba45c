"""Every mutant backend must fail the clause meant to catch it; its defect-free twin must pass it (tests/mutants.py,
and tests/variant_mutants.py for the attention variants)."""

from __future__ import annotations

import pytest

from tests.mutants import MUTANTS
from tests.variant_mutants import VARIANT_MUTANTS


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


@pytest.mark.parametrize("mutant", sorted(VARIANT_MUTANTS))
def test_variant_mutant_is_caught_by_its_clause_only(conformance_run, mutant: str) -> None:
    """reference-tiled with one defect of the attention variants fails the clause written for it and passes
    the other clauses run beside it (so it is caught for its defect)."""
    node, clause, others = VARIANT_MUTANTS[mutant]
    code, records, output = conformance_run(node, *others, "--quick", "--backend",
                                            f"tests.variant_mutants:{mutant}")
    statuses = _statuses(records, clause)
    assert "failed" in statuses, f"mutant {mutant} was not caught by {clause}: {statuses}\n{output[-3000:]}"
    other_clauses = {r["clause"] for r in records if r.get("kind") == "case"} - {clause}
    assert other_clauses, output[-3000:]
    for other in other_clauses:
        assert "passed" in _statuses(records, other) and set(_statuses(records, other)) <= {"passed", "unsupported"}, \
            f"mutant {mutant} failed {other} too: {_statuses(records, other)}\n{output[-3000:]}"
    assert code == 1


def test_variant_mutants_twin_passes(conformance_run) -> None:
    """reference-tiled itself passes every clause a variant mutant is caught by."""
    nodes = sorted({node for node, _, _ in VARIANT_MUTANTS.values()})
    code, records, output = conformance_run(*nodes, "--quick", "--backend", "reference-tiled")
    for _, clause, _ in VARIANT_MUTANTS.values():
        statuses = _statuses(records, clause)
        assert set(statuses) == {"passed"}, f"{clause}: {statuses}\n{output[-3000:]}"
    assert code == 0
