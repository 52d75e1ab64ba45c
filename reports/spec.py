"""The clauses the report states: titles and statements from ``conformance.spec``, and the tests that check
each, read from the code at build time so the report, SPEC.md and the tests cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass, field

AREA_ORDER = ("ATT", "GRAD", "SMX", "KD", "WD")


@dataclass(frozen=True)
class ClauseText:
    """A clause as the report states it."""

    id: str
    area: str
    title: str
    text: str


@dataclass
class Spec:
    """The clauses, the tests that check each (name, docstring) and the areas' names."""

    clauses: dict[str, ClauseText] = field(default_factory=dict)
    tests: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    areas: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def load_spec() -> Spec:
    """Clauses from ``conformance.spec.CLAUSES``, tests from ``conformance.spec.tests_by_clause()``."""
    try:
        from conformance import spec as conformance_spec
    except ImportError as exc:
        return Spec(problems=[f"clause statements unavailable (conformance.spec: {exc})"])
    found = Spec(
        clauses={cid: ClauseText(c.id, c.area, c.title, c.text) for cid, c in conformance_spec.CLAUSES.items()},
        areas=dict(getattr(conformance_spec, "AREAS", {})),
    )
    try:
        found.tests = conformance_spec.tests_by_clause()
    except ImportError as exc:
        found.problems.append(f"test docstrings unavailable ({exc})")
    return found


def clause_key(cid: str) -> tuple[int, str, int, str]:
    """Sort clauses by area (ATT, GRAD, SMX, KD, WD, others) then number."""
    area, _, num = cid.partition("-")
    rank = AREA_ORDER.index(area) if area in AREA_ORDER else len(AREA_ORDER)
    return rank, area, int(num) if num.isdigit() else -1, cid
