"""The report's loader: result files grouped into result sets, the unit the report shows side by side.

Readers never raise on bad content: a truncated last line, a run that crashed before its ``end`` record, a
file that is not JSON, or a record whose fields have the wrong types becomes a *problem* of that input
(listed on the page) and everything readable still renders. The readers: ``reports.cases`` (conformance
JSON lines), ``reports.timings`` (bench JSON), ``reports.asv`` (asv history).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conformance.records import Provenance
from reports.cases import Conformance, load_conformance
from reports.join import group_files, join_conformance
from reports.timings import Bench, load_bench


@dataclass
class ResultSet:
    """The results of one machine shown side by side with others: a conformance file and/or bench files (a
    GPU run may write several, e.g. attention and the row operations, each with the ceilings it measured)."""

    label: str
    slug: str
    conformance: Conformance | None = None
    benches: list[Bench] = field(default_factory=list)

    @property
    def provenance(self) -> Provenance:
        """The conformance run's provenance, else the first bench run's."""
        if self.conformance and self.conformance.provenance != Provenance():
            return self.conformance.provenance
        return self.benches[0].provenance if self.benches else Provenance()

    @property
    def sources(self) -> list[Conformance | Bench]:
        """The set's files: its conformance file first, then its bench files in the order given."""
        return ([self.conformance] if self.conformance else []) + self.benches

    @property
    def problems(self) -> list[str]:
        """Problems found while reading this set's files, each prefixed with the file name."""
        return [f"{src.path.name}: {p}" for src in self.sources for p in src.problems]


def slugify(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``._-``), never empty, at most 48 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:48] or "x"


def result_sets(conformance: list[Path], bench: list[Path], labels: list[str]) -> list[ResultSet]:
    """One result set per machine: conformance files of one machine and commit (or given the same label) are
    joined (``reports.join``: the shards of a run); a bench file joins the first set measured on the same machine
    (host name and GPU in the provenance) at the same commit, else the first set of that machine without
    bench files, else it makes a set of its own. So one run's several bench files share its set, and runs of
    one machine at two commits stay apart.

    ``labels`` name the conformance files in that order, then the sets of bench files alone; without a label
    a set is named after its provenance, and equal names get a ``#2``, ``#3`` suffix.
    """
    groups = group_files([load_conformance(path) for path in conformance], labels[:len(conformance)])
    sets = [ResultSet(label=label or "", slug="", conformance=join_conformance(parts)) for label, parts in groups]
    own_labels = [label for label, _ in groups] + labels[len(conformance):]
    for path in bench:
        loaded = load_bench(path)
        key = loaded.provenance.machine
        mine = [rs for rs in sets if key and rs.provenance.machine == key]
        commit = loaded.provenance.commit
        home = next((rs for rs in mine if commit and rs.provenance.commit == commit),
                    next((rs for rs in mine if not rs.benches), None))
        if home is None:
            sets.append(ResultSet(label="", slug="", benches=[loaded]))
        else:
            home.benches.append(loaded)
    seen: Counter[str] = Counter()
    for i, rs in enumerate(sets):
        label = (own_labels[i] if i < len(own_labels) else None) or rs.provenance.label
        seen[label] += 1
        rs.label = label if seen[label] == 1 else f"{label} #{seen[label]}"
        rs.slug = f"set{i + 1}-{slugify(rs.label)}"
    return sets
