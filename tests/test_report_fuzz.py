"""The report's readers against every field of every kind of record replaced by a value of a wrong type: a
problem is listed exactly when the results format does not allow the value, and the site, built in-process,
escapes whatever the field holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.fields import as_number, is_finite, parse_time
from conformance.results import Status
from reports.asv import COMMIT, load_asv
from reports.cases import load_conformance
from reports.load import result_sets
from reports.site import build_site
from reports.timings import load_bench
from tests.test_report import EVIL, PROVENANCE, SPEC, bench_data, case, write_asv, write_jsonl
from tests.test_report_inputs import MATHTEXT, run_record

HOSTILE = [None, [], [1, "a"], {"a": {"b": [None]}}, "", "nan", "-inf", "Infinity", 10 ** 400, -(10 ** 30), 1e308,
           -1e-320, True, EVIL, "{{ x }}", "{% for %}", MATHTEXT, "$x$", "_hidden", "\u202e\x00\n", "a" * 5000]


def fuzz_inputs(tmp_path: Path, target: str, key: str, value: object) -> tuple[Path, Path, Path]:
    """A conformance file, a bench file and an asv folder with ``key`` of one ``target`` record replaced."""
    records = [run_record({**PROVENANCE}), case("t", "ATT-1", "passed", 1, ratio=0.5, mult=2),
               case("t", "ATT-1", "failed", 2, ratio=5, mult=2, reason="big"),
               case("t", "WD-1", "passed", 3, metrics={"n": 64, "W": 63, "D": 6, "schedule": "pairwise tree"})]
    records[0]["backends"] = [{"name": "t", "available": True, "reason": None,
                               "capabilities": {"reduce_schedule": "halving tree"}}]
    data = bench_data(("t",))
    data["records"] = data["records"][:3]
    asv_root = write_asv(tmp_path / "asv")
    asv_file = next((asv_root / "results" / "ci-box").glob("aaaaaaaa-*.json"))
    asv = json.loads(asv_file.read_text())
    holders = {"run": records[0], "provenance": records[0]["provenance"], "backend": records[0]["backends"][0],
               "case": records[2], "metrics": records[3]["metrics"], "bench": data, "ceilings": data["ceilings"],
               "timing": data["records"][0], "workload": data["records"][0]["workload"],
               "memory": data["memory_scaling"][0], "asv": asv}
    holders[target][key] = value
    conf = write_jsonl(tmp_path / "c.jsonl", records)
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    asv_file.write_text(json.dumps(asv))
    return conf, bench, asv_root


#: per kind of record, the fields the fuzz replaces and what the format allows in each (None: absent)
FIELDS: dict[str, dict[str, str]] = {
    "run": {"provenance": "object", "backends": "objects", "started": "text"},
    "provenance": {"hostname": "text", "gpu": "text", "commit": "text", "dirty": "flag", "timestamp": "time"},
    "backend": {"name": "name", "available": "flag", "reason": "text", "capabilities": "object"},
    "case": {"id": "name", "clause": "text", "backend": "name", "device": "text", "status": "status",
             "dtype": "text", "seed": "integer", "err": "number", "ratio": "number", "mult": "number",
             "reason": "text", "metrics": "object", "worst": "text", "repro": "text", "duration": "number"},
    "metrics": {"n": "any", "W": "any", "D": "any", "schedule": "any"},
    "bench": {"provenance": "object", "ceilings": "object", "records": "objects", "memory_scaling": "objects",
              "note": "text"},
    "ceilings": {"matmul_tflops": "number", "copy_GBps": "number", "device": "text"},
    "workload": {"S": "scalar", "D": "scalar", "causal": "scalar"},
    "timing": {"op": "name", "backend": "name", "device": "name", "workload": "scalars", "tflops": "number",
               "median_s": "number", "peak_extra_bytes": "number", "speedup": "number", "flag": "text"},
    "memory": {"backend": "name", "S": "list", "peak_extra_bytes": "list", "slope": "number"},
    "asv": {"commit_hash": "commit", "date": "ms", "results": "dict", "result_columns": "columns", "params": "any",
            "env_name": "any"},
}


def allowed(kind: str, value: object) -> bool:
    """Whether the format allows ``value`` in a field of ``kind`` (so reading it notes no problem)."""
    scalar = isinstance(value, (str, bool)) or is_finite(value)
    optional = {
        "any": True, "text": isinstance(value, str), "flag": isinstance(value, bool),
        "number": as_number(value) is not None, "integer": is_finite(value) and float(value).is_integer(),
        "object": isinstance(value, dict), "objects": isinstance(value, list) and all(isinstance(v, dict)
                                                                                       for v in value),
        "time": isinstance(value, str) and parse_time(value) is not None,
        "scalars": isinstance(value, dict) and all(isinstance(v, (str, bool)) or is_finite(v) for v in value.values()),
    }
    required = {
        "name": isinstance(value, str) and value != "", "status": Status.parse(value) is not None, "scalar": scalar,
        "list": isinstance(value, list), "dict": isinstance(value, dict),
        "columns": isinstance(value, list) and "result" in value,
        "commit": isinstance(value, str) and COMMIT.fullmatch(value) is not None,
        "ms": is_finite(value) and 0 <= value < 1e14,
    }
    return optional[kind] or value is None if kind in optional else required[kind]


TARGETS = st.sampled_from(sorted(FIELDS)).flatmap(lambda t: st.tuples(st.just(t), st.sampled_from(sorted(FIELDS[t]))))


def problems_of(tmp_path: Path, target: str, key: str, value: object) -> list[str]:
    """What the readers list when ``key`` of one ``target`` record holds ``value`` (a bench file's curator note
    is shown among the problems by design, and is left out here)."""
    conf, bench, asv = fuzz_inputs(tmp_path, target, key, value)
    found = load_conformance(conf).problems + load_bench(bench).problems + load_asv(asv).problems
    return [p for p in found if not p.startswith("note: ")]


def test_every_field_with_every_hostile_value_is_read_or_listed(tmp_path: Path) -> None:
    """The readers alone, over every field and value: a problem exactly when the format does not allow it."""
    assert problems_of(tmp_path / "clean", "case", "reason", None) == []
    wrong = []
    for n, (target, key, value) in enumerate((t, k, v) for t in FIELDS for k in FIELDS[t] for v in HOSTILE):
        if bool(problems_of(tmp_path / str(n), target, key, value)) == allowed(FIELDS[target][key], value):
            wrong.append((target, key, value))
    assert not wrong, wrong


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=TARGETS, value=st.sampled_from(HOSTILE))
def test_fuzz_every_field_with_wrong_types(tmp_path_factory: pytest.TempPathFactory, target: tuple[str, str],
                                           value: object) -> None:
    """The site builds and escapes whatever the field holds, and a problem is listed exactly when the value
    is not one the format allows there."""
    tmp_path = tmp_path_factory.mktemp("fuzz")
    conf, bench, asv = fuzz_inputs(tmp_path, *target, value)
    out = tmp_path / "out"
    build_site(result_sets([conf], [bench], []), out, spec=SPEC, asv=load_asv(asv))
    for page in out.rglob("*.html"):
        assert "<script" not in page.read_text(encoding="utf-8"), page
    problems = problems_of(tmp_path / "again", *target, value)
    assert bool(problems) != allowed(FIELDS[target[0]][target[1]], value), problems
