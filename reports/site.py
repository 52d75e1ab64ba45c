"""Rendering the report: Jinja2 templates (autoescape on, undefined names are errors) written into an output
folder the report owns.

The report owns a folder it made: one that holds its marker file ``.attnspec-report``. It writes only there
(or into a new or empty folder, which it marks), replaces only what it writes (``GENERATED``) and refuses any
other folder, so ``--output reports`` cannot delete the report's own sources.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from conformance.results import Status
from reports import charts
from reports.asv import AsvHistory
from reports.history import history
from reports.load import ResultSet
from reports.matrix import (
    WORDS,
    Grouped,
    by_severity,
    case_rows,
    cases_by_row_and_clause,
    cases_href,
    clause_href,
    clause_results,
    matrix,
)
from reports.memory import memory
from reports.precision import precision
from reports.provenance import Column, columns
from reports.spec import Spec
from reports.speed import speed
from reports.workdepth import work_depth

HERE = Path(__file__).resolve().parent
#: the file that marks a folder as the report's own
MARKER = ".attnspec-report"
#: the files and folders a build writes into the output folder (and removes first)
GENERATED = ("index.html", "clauses", "cases", "static", "asv")


class OutputRefused(Exception):
    """The output folder is not one the report may write into."""


def check_output(output: Path, inputs: list[Path]) -> None:
    """Refuse ``output`` unless it is new, empty or marked as the report's, and unless no input lies in what
    a build replaces there."""
    if output.exists() and not output.is_dir():
        raise OutputRefused(f"{output} is not a folder")
    if output.is_dir() and not (output / MARKER).is_file() and any(output.iterdir()):
        raise OutputRefused(f"{output} holds files the report did not make (it has no {MARKER}); "
                            "choose a new or empty folder")
    replaced = [(output / name).resolve() for name in GENERATED]
    for path in inputs:
        inside = next((r for r in replaced if path.resolve().is_relative_to(r)), None)
        if inside is not None:
            raise OutputRefused(f"{path} is inside {inside}, which a build into {output} replaces")


def prepare_output(output: Path) -> None:
    """Mark ``output`` as the report's and remove what an earlier build wrote there (other files stay)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("made by attnspec report; a build replaces: " + ", ".join(GENERATED) + "\n",
                                 encoding="utf-8")
    for name in GENERATED:
        target = output / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def code_spans(text: str) -> Markup:
    """Escape ``text`` and show its backtick-quoted parts as ``<code>``."""
    parts = str(text).split("`")
    return Markup("").join(Markup("<code>{}</code>").format(p) if i % 2 else Markup.escape(p)
                           for i, p in enumerate(parts))


def environment() -> jinja2.Environment:
    """The Jinja2 environment: autoescape always on, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["code_spans"] = code_spans
    env.filters["by_severity"] = by_severity
    return env


class Site:
    """Writes the pages of one report into ``output`` with the context every page shares."""

    def __init__(self, output: Path, sets: list[ResultSet], spec: Spec) -> None:
        self.output = output
        self.env = environment()
        self.common = {
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "spec_problems": spec.problems,
        }
        self.all_provenance = columns(sets)

    def write(self, template: str, rel: str, provenance: list[Column] | None = None, **ctx: Any) -> Path:
        """Render ``template`` to ``output/rel``; links inside are relative to the output root via ``root``."""
        path = self.output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        root = "../" * rel.count("/")
        html = self.env.get_template(template).render(
            root=root, provenance=self.all_provenance if provenance is None else provenance, **self.common, **ctx)
        path.write_text(html, encoding="utf-8")
        return path


def backend_colors(sets: list[ResultSet]) -> dict[str, str]:
    """One colour per backend name seen in any file, the same in every chart."""
    names = {c.backend for rs in sets if rs.conformance for c in rs.conformance.cases}
    names |= {name for rs in sets if rs.conformance for name in rs.conformance.backends}
    names |= {r.backend for rs in sets for b in rs.benches for r in [*b.records, *b.memory_scaling]}
    return charts.palette(sorted(names))


def write_case_pages(site: Site, sets: list[ResultSet], grouped: dict[str, Grouped], spec: Spec,
                     clause_ids: list[str]) -> None:
    """A drill-down page per set, backend@device and clause, and a page per clause."""
    for rs in sets:
        for row, by_clause in grouped[rs.slug].items():
            for cid, cases in by_clause.items():
                rows = case_rows(cases)
                site.write("cases.html.j2", cases_href(rs, row, cid), provenance=columns([rs]),
                           rs=rs, row=row, cid=cid, clause=spec.clauses.get(cid), clause_link=clause_href(cid),
                           cases=rows, has_metrics=any(r.metrics for r in rows),
                           has_worst=any(r.worst for r in rows), has_repro=any(r.repro for r in rows),
                           counts=Counter(r.status for r in rows))
    for cid in clause_ids:
        site.write("clause.html.j2", clause_href(cid), cid=cid, clause=spec.clauses.get(cid),
                   area=spec.areas.get(cid.split("-")[0], ""), tests=spec.tests.get(cid, []),
                   status=clause_results(cid, sets, grouped))


def build_site(sets: list[ResultSet], output: Path, *, spec: Spec, asv: AsvHistory | None = None) -> Path:
    """Write the whole report for ``sets`` into ``output`` (replacing an earlier build) and return index.html.

    Raises OutputRefused for a folder the report does not own (see ``check_output``).
    """
    inputs = [src.path for rs in sets for src in rs.sources]
    inputs += [d for d in (asv.html_dir, asv.results_dir) if d is not None] if asv else []
    check_output(output, inputs)
    prepare_output(output)
    shutil.copytree(HERE / "static", output / "static")
    colors = backend_colors(sets)
    site = Site(output, sets, spec)
    grouped = {rs.slug: cases_by_row_and_clause(rs) for rs in sets}
    tables, clause_ids = matrix(sets, grouped, spec)
    write_case_pages(site, sets, grouped, spec, clause_ids)
    benches = [(rs, b) for rs in sets for b in rs.benches]
    return site.write(
        "index.html.j2", "index.html", sets=sets, tables=tables, words=WORDS, bad=[s for s in Status if s.bad],
        precision=precision(sets, colors),
        speed=[speed(rs, b, colors) for rs, b in benches if b.records],
        memory=[m for rs, b in benches if (m := memory(rs, b, colors))],
        work_depth=[w for rs in sets if (w := work_depth(rs, colors))],
        history=history(asv, output) if asv else None,
    )
