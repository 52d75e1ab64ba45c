"""Result files of one machine joined into one column: the shards of a run (``attnspec conformance --shard``)
and runs of other backends or chapters at the same commit.

Conformance files join when they carry the same ``--label``, or, without labels, the same machine (host name
and GPU) and commit in their provenance. The joined file holds every case of its parts (a later part's
result for the same test id and backend replaces an earlier one, as a re-run does within one file), every
backend listed, the earliest start as its date, and is finished when every part is.
"""

from __future__ import annotations

from dataclasses import replace

from conformance.fields import parse_time
from reports.cases import Conformance


def join_key(conformance: Conformance, label: str | None, index: int) -> tuple[object, ...]:
    """Files with equal keys join: the label when given, else machine and commit, else the file alone."""
    if label is not None:
        return ("label", label)
    prov = conformance.provenance
    if prov.machine is not None and prov.commit:
        return ("machine", prov.machine, prov.commit)
    return ("file", index)


def group_files(loaded: list[Conformance], labels: list[str]) -> list[tuple[str | None, list[Conformance]]]:
    """The files grouped by :func:`join_key`, groups in the order of their first file, each with its label."""
    groups: dict[tuple[object, ...], tuple[str | None, list[Conformance]]] = {}
    for i, conformance in enumerate(loaded):
        label = labels[i] if i < len(labels) else None
        groups.setdefault(join_key(conformance, label, i), (label, []))[1].append(conformance)
    return list(groups.values())


def join_conformance(parts: list[Conformance]) -> Conformance:
    """One conformance file made of ``parts`` (module docstring); a single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    cases = {}
    for part in parts:
        for case in part.cases:
            cases.pop((case.id, case.backend), None)
            cases[(case.id, case.backend)] = case
    stamps = [p.provenance.timestamp for p in parts if p.provenance.timestamp and parse_time(p.provenance.timestamp)]
    earliest = min(stamps, key=parse_time) if stamps else parts[0].provenance.timestamp  # type: ignore[arg-type]
    joined = Conformance(parts[0].path, provenance=replace(parts[0].provenance, timestamp=earliest),
                         cases=list(cases.values()), runs=sum(p.runs for p in parts),
                         finished=all(p.finished for p in parts))
    for part in parts:
        joined.backends.update(part.backends)
        joined.problems += [f"{part.path.name}: {problem}" for problem in part.problems]
    return joined
