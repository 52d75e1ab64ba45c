"""``attnspec report``: build the static HTML report from conformance, benchmark and asv results.

    attnspec report [--conformance PATH ...] [--bench PATH ...] [--label NAME ...] [--asv DIR] [--output DIR]
    python -m reports.build ...

Each conformance file is a result set; a bench file joins the set measured on the same machine (host and GPU
in its provenance), else it is a set of its own. Sets are shown side by side, labelled in order by
``--label`` (else by their provenance). The site (``index.html``, a page per clause, a drill-down
page per backend and clause, ``static/report.css``, a copy of asv's pages) needs no network: charts are
inline SVG drawn with matplotlib, there is no JavaScript. Every string from a result file is escaped
(Jinja2 autoescape). See docs/report.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports.asv import load_asv
from reports.load import result_sets
from reports.site import OutputRefused, build_site
from reports.spec import load_spec

DEFAULT_OUTPUT = Path("reports/out")
#: exit statuses: a named input does not exist (the report is built without it); the output folder is refused
MISSING_INPUT, OUTPUT_REFUSED = 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``attnspec report``."""
    parser = argparse.ArgumentParser(prog="attnspec report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conformance", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                        help="conformance JSON-lines file(s), one result set each")
    parser.add_argument("--bench", nargs="+", action="extend", default=[], type=Path, metavar="PATH",
                        help="bench JSON file(s); each joins the result set of the same machine")
    parser.add_argument("--label", nargs="+", action="extend", default=[], metavar="NAME",
                        help="names of the result sets in order: conformance files first, then bench files "
                        "of other machines (default: GPU or CPU and host name)")
    parser.add_argument("--asv", type=Path, metavar="DIR",
                        help="asv html directory, results directory, or a folder holding either (e.g. .asv)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"where to write the site (default {DEFAULT_OUTPUT}/): a new or empty folder, or one "
                        "an earlier build made")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the report: 0; 1 if a named input file or directory does not exist (the report is built anyway);
    2 if the output folder is refused (nothing is written)."""
    args = parse_args(argv)
    missing = [p for p in [*args.conformance, *args.bench, *([args.asv] if args.asv else [])] if not p.exists()]
    for path in missing:
        print(f"attnspec report: {path}: no such file or directory", file=sys.stderr)
    sets = result_sets(args.conformance, args.bench, args.label)
    asv = load_asv(args.asv) if args.asv else None
    try:
        index = build_site(sets, args.output, spec=load_spec(), asv=asv)
    except OutputRefused as exc:
        print(f"attnspec report: refusing --output {args.output}: {exc}", file=sys.stderr)
        return OUTPUT_REFUSED
    for rs in sets:
        for problem in rs.problems:
            print(f"attnspec report: {rs.label}: {problem}", file=sys.stderr)
    for problem in asv.problems if asv else []:
        print(f"attnspec report: asv: {problem}", file=sys.stderr)
    print(f"report: {index}")
    return MISSING_INPUT if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
