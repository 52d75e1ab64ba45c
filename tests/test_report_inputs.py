"""The report against hostile and broken inputs: ``attnspec report`` never crashes on a result file, lists
what is wrong as a problem, escapes what it shows, and writes only into a folder it owns.

Crash cases run the real command line (``attnspec report`` in a subprocess). ``tests/test_report_fuzz.py``
replaces each field of each kind of record by a value of a wrong type.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conformance.results import Status
from reports import charts
from reports.asv import load_asv
from reports.cases import load_conformance
from reports.load import result_sets
from reports.site import MARKER, build_site
from reports.timings import load_bench
from tests.test_report import (
    EVIL,
    PROVENANCE,
    SPEC,
    bench_data,
    case,
    conformance_records,
    parse,
    write_asv,
    write_jsonl,
)

ATTNSPEC = str(Path(sys.executable).with_name("attnspec"))
REPORTS = Path(__file__).resolve().parent.parent / "reports"
MATHTEXT = r"$\frac{$"


def report(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``attnspec report`` with ``args``."""
    return subprocess.run([ATTNSPEC, "report", *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def run_record(provenance: object = PROVENANCE, started: str = "2025-01-02T03:04:05+00:00", **extra: object) -> dict:
    """A run record with ``provenance``."""
    return {"kind": "run", "run_id": "r1", "started": started, "provenance": provenance, "backends": [], **extra}


def index_of(out: Path) -> str:
    """The built index page, checked to hold no script element."""
    page = out / "index.html"
    assert "script" not in parse(page).tags
    return page.read_text(encoding="utf-8")


@pytest.mark.parametrize("provenance", [["not", "an", "object"], "vm", 3, {"hostname": ["a"], "gpu": {"x": 1}}])
def test_provenance_that_is_not_an_object_is_a_problem(tmp_path: Path, provenance: object) -> None:
    conf = write_jsonl(tmp_path / "c.jsonl", [run_record(provenance), case("torch", "ATT-1", "passed")])
    done = report("--conformance", conf, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    html = index_of(tmp_path / "out")
    assert "provenance" in done.stderr and ("not an object" in html or "not a string" in html)
    assert "torch@cpu" in html


def test_unbuildable_work_depth_schedule_is_a_problem(tmp_path: Path) -> None:
    kinds = {"t": "blocked p=0 + pairwise tree", "v": "blocked p=99999999999 + halving tree", "u": "sequential"}
    wd = [case(name, "WD-1", "passed", k, metrics={"n": 128, "W": 127, "D": 7, "schedule": kind})
          for k, (name, kind) in enumerate(kinds.items())]
    conf = write_jsonl(tmp_path / "c.jsonl", [run_record(), *wd])
    done = report("--conformance", conf, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    section = index_of(tmp_path / "out").split('id="work-depth"')[1]
    assert "t@cpu: schedule &#34;blocked p=0 + pairwise tree&#34; is not rebuilt (p must be &gt;= 1" in section
    assert "v@cpu: schedule &#34;blocked p=99999999999 + halving tree&#34; is not rebuilt (not one of" in section
    assert "u@cpu: sequential" in section and "127 ≤ 128" in section  # the good schedule is still drawn


def test_mathtext_in_workload_keys_and_asv_is_drawn_as_text(tmp_path: Path) -> None:
    data = bench_data(("torch",))
    for rec in data["records"]:
        rec["workload"][MATHTEXT] = rec["workload"].pop("S", rec["workload"].pop("V", 1))
    data["memory_scaling"][0]["op"] = MATHTEXT
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    asv = write_asv(tmp_path / "asv")
    results = tmp_path / "asv" / "results" / "ci-box"
    first = next(results.glob("aaaaaaaa-*.json"))
    bad = json.loads(first.read_text())
    bad["results"][MATHTEXT] = bad["results"].pop("bench_attention.TrackAttention.track_tflops")
    first.write_text(json.dumps(bad))
    (results / "cccccccc-existing-py.json").write_text(json.dumps({**bad, "commit_hash": MATHTEXT}))
    done = report("--bench", bench, "--asv", asv, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    html = index_of(tmp_path / "out")
    assert MATHTEXT in html  # a chart's axis label and the table, as text
    assert "commit_hash &#34;$\\\\frac{$&#34; is not a hexadecimal commit hash" in html


@pytest.mark.parametrize("date", ["NaN", "Infinity", "\"yesterday\"", "1e300", "null"])
def test_asv_date_that_is_not_a_time_is_a_problem(tmp_path: Path, date: str) -> None:
    asv = write_asv(tmp_path / "asv")
    first = next((tmp_path / "asv" / "results" / "ci-box").glob("aaaaaaaa-*.json"))
    first.write_text(first.read_text().replace('"date": 1735787045000', f'"date": {date}'))
    done = report("--asv", asv, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    history = index_of(tmp_path / "out").split('id="history"')[1]
    assert "is not a time in ms since the epoch" in history
    assert "<svg" in history  # the other commit is still charted


def test_output_folder_with_foreign_files_is_refused(tmp_path: Path) -> None:
    conf = write_jsonl(tmp_path / "c.jsonl", conformance_records())
    mine = tmp_path / "mine"
    (mine / "static").mkdir(parents=True)
    (mine / "static" / "notes.css").write_text("keep me")
    done = report("--conformance", conf, "--output", mine)
    assert done.returncode == 2 and "holds files the report did not make" in done.stderr
    assert (mine / "static" / "notes.css").read_text() == "keep me" and not (mine / "index.html").exists()


def test_output_into_the_reports_sources_is_refused(tmp_path: Path) -> None:
    """``attnspec report --output reports`` from the repository root deleted reports/static/: here a copy."""
    root = tmp_path / "repo"
    shutil.copytree(REPORTS, root / "reports", ignore=shutil.ignore_patterns("gpu", "out", "__pycache__"))
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    done = report("--output", "reports", cwd=root)
    assert done.returncode == 2, done.stdout
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_a_marked_folder_is_rebuilt_and_other_files_stay(tmp_path: Path) -> None:
    conf = write_jsonl(tmp_path / "c.jsonl", conformance_records())
    out = tmp_path / "out"
    assert report("--conformance", conf, "--output", out).returncode == 0
    assert (out / MARKER).is_file()
    (out / "screenshots").mkdir()
    (out / "screenshots" / "index.png").write_bytes(b"png")
    (out / "cases" / "stale.html").write_text("from an earlier build")
    assert report("--conformance", conf, "--output", out).returncode == 0
    assert (out / "screenshots" / "index.png").read_bytes() == b"png" and not (out / "cases" / "stale.html").exists()


def test_an_input_inside_what_a_build_replaces_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    conf = write_jsonl(tmp_path / "c.jsonl", conformance_records())
    assert report("--conformance", conf, "--output", out).returncode == 0
    inside = write_jsonl(out / "cases" / "c.jsonl", conformance_records())
    done = report("--conformance", inside, "--output", out)
    assert done.returncode == 2 and "which a build into" in done.stderr and inside.is_file()


def test_repro_command_is_shown_escaped_on_the_drill_down(tmp_path: Path) -> None:
    records = [run_record(), case("torch", "ATT-1", "failed", 1, reason="err > bound"),
               case("torch", "ATT-1", "passed", 2), case("torch", "ATT-10", "failed", 3)]
    command = f"pytest conformance/test_attention.py --backend torch -k 'ATT-1 and 114' # {EVIL} {{{{x}}}}"
    records[1]["repro"] = command
    conf = write_jsonl(tmp_path / "c.jsonl", records)
    out = tmp_path / "out"
    build_site(result_sets([conf], [], ["cpu"]), out, spec=SPEC)
    att1 = next(out.glob("cases/*/torch@cpu/ATT-1.html")).read_text()
    escaped = command.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;")
    assert f"<code>{escaped}</code>" in att1 and "<script" not in att1
    att10 = next(out.glob("cases/*/torch@cpu/ATT-10.html")).read_text()
    assert "reproduce" not in att10  # no record carries the field: no column


def test_case_records_missing_fields_are_problems_not_rows(tmp_path: Path) -> None:
    good = case("torch", "ATT-1", "passed")
    broken = [{k: v for k, v in good.items() if k != "backend"}, {**good, "status": "exploded"},
              {**good, "id": ["ATT-1"]}, {"kind": "case"}]
    conf = write_jsonl(tmp_path / "c.jsonl", [run_record(), good, *broken])
    loaded = load_conformance(conf)
    assert [c.row for c in loaded.cases] == ["torch@cpu"]
    assert {p.split(":")[0] for p in loaded.problems} == {f"line {n}" for n in range(3, 3 + len(broken))}
    out = tmp_path / "out"
    build_site(result_sets([conf], [], []), out, spec=SPEC)
    html = index_of(out)
    assert "?@?" not in html and "None@" not in html and "a case record without backend" in html


def test_provenance_date_is_the_earliest_start_of_the_run(tmp_path: Path) -> None:
    """Each backend's pytest child writes a run record; the last one started latest."""
    late, early = ({**PROVENANCE, "timestamp": t} for t in ("2025-01-02T03:09:00+00:00", "2025-01-02T03:01:00Z"))
    conf = write_jsonl(tmp_path / "c.jsonl", [run_record(late, started="2025-01-02T03:09:00+00:00"),
                                              case("a", "ATT-1", "passed"),
                                              run_record(early, started="2025-01-02T03:01:00Z"),
                                              case("b", "ATT-1", "passed"),
                                              run_record({**late, "timestamp": "2025-01-02T03:30:00+00:00"},
                                                         started="2025-01-02T03:30:00+00:00")])
    assert load_conformance(conf).provenance.timestamp == "2025-01-02T03:01:00Z"
    out = tmp_path / "out"
    build_site(result_sets([conf], [], []), out, spec=SPEC)
    assert "2025-01-02T03:01:00Z (the earliest start of 3 runs)" in index_of(out)


def test_precision_counts_xfail_as_the_matrix_does(tmp_path: Path) -> None:
    """Three Triton KD-7 xfails (interpreter memory) were listed as failed in the precision table."""
    cases = [case("triton", "KD-7", "xfail", k, ratio=9.0, mult=2, reason="interpreter memory") for k in range(3)]
    cases += [case("triton", "KD-7", "passed", 5, ratio=0.5, mult=2), case("triton", "KD-7", "failed", 6, ratio=7,
                                                                          mult=2)]
    conf = write_jsonl(tmp_path / "c.jsonl", [run_record(), *cases])
    out = tmp_path / "out"
    build_site(result_sets([conf], [], []), out, spec=SPEC)
    table = index_of(out).split('id="precision"')[1].split("</table>")[0]
    assert '<span class="badge st-failed">1 failed</span> <span class="badge st-xfail">3 xfail</span> ' \
           '<span class="badge st-passed">1 passed</span>' in table


def test_speed_axis_is_logarithmic_where_rates_span_decades(tmp_path: Path) -> None:
    data = bench_data(("gpu-kernel", "cpu-loop"))
    for rec in data["records"]:
        if rec["backend"] == "cpu-loop" and rec["tflops"]:
            rec["tflops"] /= 5e3  # a CPU backend next to a GPU one: 4 decades apart
    data["records"] = [r for r in data["records"] if r["op"] == "attention_fwd"]
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    out = tmp_path / "out"
    build_site(result_sets([], [bench], []), out, spec=SPEC)
    speed = index_of(out).split('id="speed"')[1].split("</figure>")[0]
    assert "1e-05" in speed or "0.0001" in speed  # a log axis labels the decade the CPU backend is in
    assert charts.spans_decades([1e-5, 0.5]) and not charts.spans_decades([0.2, 1.5])


def test_every_status_has_a_word_and_unknown_ones_are_problems(tmp_path: Path) -> None:
    conf = write_jsonl(tmp_path / "c.jsonl", [run_record(), *(case("t", "ATT-1", s.value, i)
                                                              for i, s in enumerate(Status))])
    out = tmp_path / "out"
    build_site(result_sets([conf], [], []), out, spec=SPEC)
    matrix = index_of(out).split('id="matrix"')[1].split("</section>")[0]
    for status in Status:
        assert f"st-{status.value}" in matrix
    assert 'class="cell st-crashed"' in matrix  # the most severe status colours the cell


def test_everything_hostile_at_once_through_the_command_line(tmp_path: Path) -> None:
    records = conformance_records(EVIL)
    records[0]["provenance"] = [EVIL]
    for rec in records[1:6]:
        rec.update(err=[1], ratio={"x": MATHTEXT}, mult="inf", seed=10 ** 400, metrics=EVIL, shape=MATHTEXT)
    conf = write_jsonl(tmp_path / "c.jsonl", records)
    data = bench_data((EVIL, MATHTEXT))
    data["ceilings"] = [EVIL]
    data["records"][0]["workload"] = {MATHTEXT: float("nan"), "S": 10 ** 400}
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    done = report("--conformance", conf, "--bench", bench, "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    html = index_of(tmp_path / "out")
    assert "provenance is" in html and "not an object" in html and "&lt;script&gt;" in html
    for page in (tmp_path / "out").rglob("*.html"):
        assert "<script" not in page.read_text(encoding="utf-8")
def test_loaders_tolerate_bad_files(tmp_path: Path) -> None:
    lines = write_jsonl(tmp_path / "c.jsonl", conformance_records(), end=False, truncate=True)
    conf = load_conformance(lines)
    counts = conf.counts()  # one crash the supervisor recorded, one start left without a result
    assert counts["crashed"] == 1 and counts["interrupted"] == 1 and conf.runs == 1 and not conf.finished
    assert any("truncated" in p for p in conf.problems)
    assert load_conformance(tmp_path / "nope.jsonl").problems
    assert "not valid JSON" in load_bench(lines).problems[0]
    interrupted = tmp_path / "b.json"
    interrupted.write_text(json.dumps({**bench_data(), "interrupted": True, "finished": None}))
    assert load_bench(interrupted).problems == ["the benchmark run was interrupted: showing the records it wrote"]
    curated = tmp_path / "n.json"
    curated.write_text(json.dumps({**bench_data(), "note": "reduce_sum records removed"}))
    assert load_bench(curated).problems == ["note: reduce_sum records removed"]
    assert load_asv(tmp_path).problems


def test_rerun_replaces_earlier_result(tmp_path: Path) -> None:
    records = conformance_records()
    again = {**records[2], "status": "failed", "reason": "second run"}
    path = write_jsonl(tmp_path / "c.jsonl", [*records, records[0], {"kind": "start", "id": again["id"],
                                                                    "backend": "torch"}, again])
    conf = load_conformance(path)
    assert conf.runs == 2
    assert [c.reason for c in conf.cases if c.id == again["id"]] == ["second run"]


def test_chart_text_is_plain_text() -> None:
    """Names reach the SVG as text: no mathtext, no control characters (a NUL is not allowed in SVG)."""
    svg = charts.line_chart([charts.Panel(f"t\x00{MATHTEXT}", [charts.Series("_b\x1b", [1, 2], [1, 2])],
                                          "$x$", "y\n", xticklabels=["$c$", "d"])])
    assert "\x00" not in svg and "\x1b" not in svg
    for text in ("t $\\frac{$", "$x$", "$c$", "_b"):
        assert text in svg, text


@pytest.mark.parametrize("extreme", [1e308, 5e-324, 1e-300])
def test_extreme_numbers_in_every_chart(tmp_path: Path, extreme: float) -> None:
    """Finite numbers near the float limits in every drawn field: the site builds without a numeric warning."""
    records = [run_record(), case("t", "ATT-1", "passed", 1, ratio=extreme, mult=2),
               case("t", "ATT-1", "failed", 2, ratio=1.0, mult=extreme),
               case("t", "WD-1", "passed", 3, metrics={"n": extreme, "W": extreme, "D": extreme})]
    conf = write_jsonl(tmp_path / "c.jsonl", records)
    data = bench_data(("t",))
    data["records"][0].update(tflops=extreme, median_s=extreme, peak_extra_bytes=extreme)
    data["ceilings"].update(matmul_tflops=extreme, copy_GBps=extreme)
    data["memory_scaling"][0]["peak_extra_bytes"][1] = extreme
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    asv = write_asv(tmp_path / "asv")
    first = next((asv / "results" / "ci-box").glob("aaaaaaaa-*.json"))
    first.write_text(first.read_text().replace("[1.0, 4.0, 0.5, null]", f"[{extreme!r}, 4.0, 0.5, null]"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        build_site(result_sets([conf], [bench], []), tmp_path / "out", spec=SPEC, asv=load_asv(asv))
    assert "<svg" in index_of(tmp_path / "out").split('id="history"')[1]


def test_a_log_chart_without_a_positive_point_is_drawn_linear() -> None:
    svg = charts.line_chart([charts.Panel("zeros", [charts.Series("d", [0, 0], [0, 0])], "n", "D", logx=True,
                                          logy=True)])
    assert "<svg" in svg
