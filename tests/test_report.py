"""Self-tests of the HTML report (reports/): fixtures are written here, in the formats of
docs/results-format.md, the bench JSON and asv's results files."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports import build
from reports.asv import load_asv
from reports.cases import INTERRUPTED_REASON
from reports.load import result_sets
from reports.site import build_site, environment
from reports.spec import ClauseText, Spec

EVIL = "<script>alert(1)</script>"

PROVENANCE = {
    "hostname": "ci-box", "platform": "Linux-6.1-x86_64", "python": "3.11.9", "cpu": "AMD EPYC 9654",
    "gpu": None, "driver": None, "cuda": None, "torch": "2.13.0+cpu", "triton": None, "cupy": None,
    "numpy": "2.4.6", "commit": "0123456789abcdef0123", "dirty": True, "timestamp": "2025-01-02T03:04:05+00:00",
}
GPU_PROVENANCE = {**PROVENANCE, "hostname": "h200-node", "gpu": "NVIDIA H200", "driver": "580.65",
                  "cuda": "13.0", "triton": "3.6.0", "cupy": "13.6.0", "dirty": False}

SPEC = Spec(
    clauses={
        "ATT-1": ClauseText("ATT-1", "ATT", "forward output", "`out = softmax(scale * Q Kᵀ + bias) V` row-wise."),
        "ATT-10": ClauseText("ATT-10", "ATT", "linear memory", "no Sq x Sk buffer"),
        "GRAD-1": ClauseText("GRAD-1", "GRAD", "gradients", "dq, dk, dv equal the oracle's"),
        "WD-1": ClauseText("WD-1", "WD", "declared schedule", "W = n - 1, D = ceil(log2 n)"),
    },
    tests={"ATT-1": [("test_forward_matches_oracle", "The output equals the float64 oracle.\n\nSecond paragraph.")]},
    areas={"ATT": "exact attention, forward", "GRAD": "attention gradients", "WD": "work-depth cost model"},
)


def case(backend: str, clause: str, status: str, n: int = 0, *, device: str = "cpu", dtype: str = "float32",
         ratio: float | None = None, mult: float | None = None, reason: str | None = None,
         metrics: dict | None = None) -> dict:
    """A case record as the conformance writer emits it."""
    shape = f"B1H2-{113 + n}x203-D59"
    return {
        "kind": "case", "id": f"{clause}[{backend}-{device}-{dtype}-{shape}]", "clause": clause,
        "area": clause.split("-")[0], "test": "test_x", "backend": backend, "device": device, "dtype": dtype,
        "shape": shape, "seed": 1000 + n, "status": status,
        "err": None if ratio is None else ratio * 1e-6, "ref_err": None if ratio is None else 1e-6,
        "ratio": ratio, "mult": mult, "bound": None, "reason": reason, "duration": 0.01, "metrics": metrics or {},
    }


def conformance_records(backend: str = "torch", device: str = "cpu") -> list[dict]:
    """A run with a case of every status, precision scores for two dtypes, WD metrics and a crash in progress."""
    cases = [case(backend, "ATT-1", "passed", i, ratio=0.4 + 0.2 * i, mult=2, dtype=dt, device=device)
             for i in range(6) for dt in ("float32", "bfloat16")]
    cases += [
        case(backend, "ATT-1", "failed", 7, ratio=5.0, mult=2, reason="err 5e-06 > bound 2.1e-06", device=device),
        case(backend, "ATT-1", "unsupported", 8, reason="D=59 is not a multiple of 8", device=device),
        case(backend, "ATT-10", "xfail", 9, reason="known: materialises scores (issue 12)", device=device),
        case(backend, "ATT-10", "xpass", 10, device=device),
        case(backend, "GRAD-1", "not_implemented", 11, reason="no attention_backward", device=device),
        case(backend, "GRAD-1", "timeout", 12, reason="no result after 600 s", device=device),
        case(backend, "GRAD-1", "error", 13, reason="harness: KeyError 'lse'", device=device),
        case(backend, "GRAD-1", "crashed", 14, reason="CUDA error: an illegal memory access", device=device),
        case(backend, "GRAD-1", "passed", 15, ratio=1.1, mult=3, device=device),
    ]
    cases[12]["repro"] = f"attnspec conformance --backend {backend} -k '{cases[12]['id']}'"
    cases += [case(backend, "WD-1", "passed", 20 + k, device=device,
                   metrics={"n": n, "W": n - 1, "D": (n - 1).bit_length(), "schedule": "pairwise tree"})
              for k, n in enumerate((64, 100, 1024))]
    run = {"kind": "run", "run_id": "r1", "started": "2025-01-02T03:04:05Z", "provenance": PROVENANCE, "argv": [],
           "backends": [{"name": backend, "origin": "builtin", "available": True, "reason": None,
                         "description": f"{backend} kernels <i>described</i>",
                         "capabilities": {"reduce_schedule": "pairwise tree"}},
                        {"name": "cupy", "origin": "builtin", "available": False, "reason": "CuPy is not installed",
                         "capabilities": None}]}
    out = [run]
    for c in cases:
        out += [{"kind": "start", "id": c["id"], "backend": backend}, c]
    out.append({"kind": "start", "id": f"ATT-1[{backend}-{device}-float32-B1H2-2048x2048-D128]", "backend": backend})
    return out


def write_jsonl(path: Path, records: list[dict], *, end: bool = True, truncate: bool = False) -> Path:
    """Write records as JSON lines, optionally with an end record or a truncated last line."""
    lines = [json.dumps(r) for r in records]
    if end:
        lines.append(json.dumps({"kind": "end", "run_id": "r1", "finished": "2025-01-02T04:00:00Z", "counts": {}}))
    text = "\n".join(lines) + "\n"
    if truncate:
        text += lines[-1][: len(lines[-1]) // 2]
    path.write_text(text, encoding="utf-8")
    return path


def bench_data(backends: tuple[str, ...] = ("torch", "reference"), device: str = "cpu") -> dict:
    """A bench JSON document: attention TFLOP/s over S, KD loss GB/s over V, a failed gate, memory scaling."""
    records = []
    for b, backend in enumerate(backends):
        for S in (256, 512, 1024, 2048):
            for causal in (False, True):
                records.append({
                    "op": "attention_fwd", "backend": backend, "device": device, "dtype": "float32",
                    "workload": {"B": 1, "H": 8, "S": S, "D": 64, "causal": causal},
                    "label": f"B1H8-S{S}-D64{'-causal' if causal else ''}",
                    "gate": "passed", "reason": None, "median_s": 1e-3 * S / 256 / (b + 1), "iqr_s": 1e-5,
                    "tflops": 0.05 * (b + 1) * (S / 256) ** 0.3, "gbps": None, "fraction_of_ceiling": 0.1 * (b + 1),
                    "peak_extra_bytes": 4096 * S, "baseline": backends[-1], "speedup": 1.0 + b,
                    "flag": "suspicious: > 10x over vendor" if b == 1 and S == 2048 else None,
                })
        for V in (1024, 4096, 16384):
            records.append({
                "op": "kd_loss", "backend": backend, "device": device, "dtype": "float32",
                "workload": {"N": 64, "V": V}, "label": f"kd V={V}", "gate": "passed", "reason": None,
                "median_s": 2e-4, "iqr_s": 1e-6, "tflops": None, "gbps": 5.0 + b + V / 4096,
                "fraction_of_ceiling": 0.2, "peak_extra_bytes": 8 * V, "baseline": backends[-1], "speedup": 1.0,
                "flag": None,
            })
    records.append({"op": "attention_fwd", "backend": backends[0], "device": device, "dtype": "bfloat16",
                    "workload": {"B": 1, "H": 8, "S": 4096, "D": 64, "causal": False}, "label": "B1H8-S4096-D64",
                    "gate": "failed", "reason": "ATT-1 failed on this workload", "median_s": None, "iqr_s": None,
                    "tflops": None, "gbps": None, "fraction_of_ceiling": None, "peak_extra_bytes": None,
                    "baseline": None, "speedup": None, "flag": None})
    scaling = [{"backend": backend, "op": "attention_fwd", "device": device, "S": [256, 512, 1024, 2048],
                "peak_extra_bytes": [1000 * (S / 256) ** (1 + b) for S in (256, 512, 1024, 2048)], "slope": 1.0 + b}
               for b, backend in enumerate(backends)]
    return {"kind": "bench", "provenance": PROVENANCE,
            "ceilings": {"matmul_tflops": 1.5, "copy_GBps": 20.0, "device": device},
            "records": records, "memory_scaling": scaling}


def write_asv(root: Path) -> Path:
    """An asv results directory (format 2) with two commits on one machine, and an html directory."""
    results = root / "results"
    (results / "ci-box").mkdir(parents=True)
    (results / "ci-box" / "machine.json").write_text(json.dumps({"machine": "ci-box", "version": 1}))
    (results / "benchmarks.json").write_text(json.dumps({
        "bench_attention.TrackAttention.track_tflops": {"unit": "TFLOP/s"},
        "bench_attention.TimeAttention.time_forward": {"unit": "seconds"},
        "bench_attention.TrackAttention.track_vs_cudnn": {"unit": "ratio"},
        "version": 2,
    }))
    columns = ["result", "params", "version", "started_at", "duration"]
    grid = [["'torch'", "'reference'"], ["'S=256'", "'S=1024'"]]  # results run over the product, in order
    for i, (commit, tflops) in enumerate((("a" * 40, [1.0, 4.0, 0.5, None]), ("b" * 40, [1.2, 4.8, 0.55, 1.1]))):
        (results / "ci-box" / f"{commit[:8]}-existing-py.json").write_text(json.dumps({
            "commit_hash": commit, "env_name": "existing-py", "date": 1735787045000 + i * 86400000,
            "params": {"machine": "ci-box"}, "python": "3.11", "requirements": {}, "env_vars": {},
            "result_columns": columns, "durations": {}, "version": 2,
            "results": {
                "bench_attention.TrackAttention.track_tflops": [tflops, grid, "v1", 0, 1.0],
                "bench_attention.TimeAttention.time_forward": [[0.01 / (i + 1)], [], "v1", 0, 1.0],
                "bench_attention.TrackAttention.track_vs_cudnn": [[0.9, 0.9, None, None], grid, "v1", 0, 1.0],
            },
        }))
    html = root / "html"
    html.mkdir()
    (html / "index.html").write_text("<html><body>asv</body></html>")
    (html / "index.json").write_text("{}")
    return root


class Links(HTMLParser):
    """Collects the tags of a page and the targets of its links and sources."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.hrefs += [v for k, v in attrs if k in ("href", "xlink:href") and v]
        self.srcs += [v for k, v in attrs if k == "src" and v]


def parse(path: Path) -> Links:
    """The links and tags of an HTML file."""
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def local_targets(page: Path) -> list[Path]:
    """The files the relative links of a page point to (anchors stripped)."""
    return [(page.parent / h.split("#")[0]).resolve() for h in parse(page).hrefs
            if not h.startswith(("#", "http:", "https:")) and h.split("#")[0]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of one CPU set (conformance + bench) and one GPU set (conformance only), with asv history."""
    tmp_path = tmp_path_factory.mktemp("report")
    cpu = write_jsonl(tmp_path / "cpu.jsonl", conformance_records("torch"))
    gpu_records = conformance_records("triton", device="cuda")
    gpu_records[0]["provenance"] = GPU_PROVENANCE
    gpu = write_jsonl(tmp_path / "gpu.jsonl", gpu_records, end=False, truncate=True)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(bench_data()))
    sets = result_sets([cpu, gpu], [bench], ["CPU run"])
    build_site(sets, tmp_path / "out", spec=SPEC, asv=load_asv(write_asv(tmp_path / "asv")))
    return tmp_path / "out"


def test_every_status_is_shown_in_the_matrix(site: Path) -> None:
    html = (site / "index.html").read_text()
    for status in ("passed", "failed", "unsupported", "crashed", "timeout", "xfail", "xpass", "not_implemented",
                   "error"):
        assert f"st-{status}" in html, status
    matrix = html[html.index('id="matrix"'):html.index('id="precision"')]
    assert "12 pass" in matrix and "1 fail" in matrix and "1 unsup." in matrix and "1 crash" in matrix
    assert "D=59 is not a multiple of 8" in matrix  # unsupported reason on hover (title)
    overview = html[:html.index('id="matrix"')]
    assert "<b>cupy</b>: CuPy is not installed" in overview


def test_drill_down_links_resolve_and_list_the_cases(site: Path) -> None:
    index = site / "index.html"
    targets = local_targets(index)
    drill = [t for t in targets if "/cases/" in t.as_posix()]
    assert drill and all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    page = next(t for t in drill if t.name == "ATT-1.html" and "torch" in t.parent.name)
    text = page.read_text()
    for expected in ("ATT-1[torch-cpu-float32-B1H2-120x203-D59]", "err 5e-06 &gt; bound 2.1e-06", "1007",
                     "D=59 is not a multiple of 8", "forward output"):
        assert expected in text, expected
    assert text.index("st-failed") < text.index("st-passed")  # failures first
    assert "<code>attnspec conformance --backend torch -k &#39;ATT-1[torch-cpu-float32-B1H2-120x203-D59]&#39;</code>" \
        in text
    assert all(t.is_file() for t in local_targets(page))


def test_strings_from_backends_are_escaped(tmp_path: Path) -> None:
    records = conformance_records(EVIL)
    records[1]["reason"] = records[2]["reason"] = f"bad {EVIL} & <b>bold</b>"
    conf = write_jsonl(tmp_path / "evil.jsonl", records)
    bench = tmp_path / "bench.json"
    data = bench_data((EVIL, "ref$x$"))
    data["records"][0]["flag"] = EVIL
    bench.write_text(json.dumps(data))
    out = tmp_path / "out"
    build_site(result_sets([conf], [bench], [EVIL]), out, spec=SPEC)
    pages = list(out.rglob("*.html"))
    assert len(pages) > 3
    for page in pages:
        text = page.read_text()
        assert "<script" not in text and "<b>bold" not in text, page
        assert "script" not in parse(page).tags
    index = (out / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "ref$x$" in index  # a $ in a name is drawn as text, not mathtext


def test_result_sets_side_by_side(site: Path) -> None:
    html = (site / "index.html").read_text()
    matrix = html[html.index('id="matrix"'):html.index('id="precision"')]
    assert matrix.count('<tr class="group">') == 2 * 3  # two sets in each of the ATT, GRAD, WD tables
    assert "CPU run" in matrix and "NVIDIA H200 (h200-node)" in matrix
    assert "torch@cpu" in matrix and "triton@cuda" in matrix
    sets = html[:html.index('id="matrix"')]  # each set lists its backends with their descriptions, as text
    assert "<b>torch</b>: torch kernels &lt;i&gt;described&lt;/i&gt;" in sets
    assert "<b>triton</b>: triton kernels" in sets
    prov = html[html.index('id="provenance"'):]
    for expected in ("ci-box", "NVIDIA H200", "580.65", "2.13.0+cpu", "0123456789ab (dirty)", "2025-01-02T03:04:05"):
        assert expected in prov, expected


def test_bench_files_join_the_set_of_their_machine(tmp_path: Path) -> None:
    cpu = write_jsonl(tmp_path / "cpu.jsonl", conformance_records("torch"))
    gpu_records = conformance_records("triton", device="cuda")
    gpu_records[0]["provenance"] = GPU_PROVENANCE
    gpu = write_jsonl(tmp_path / "gpu.jsonl", gpu_records)
    gpu_bench, other_bench = tmp_path / "gpu-bench.json", tmp_path / "other-bench.json"
    gpu_bench.write_text(json.dumps({**bench_data(("triton",), "cuda"), "provenance": GPU_PROVENANCE}))
    other_bench.write_text(json.dumps({**bench_data(), "provenance": {**PROVENANCE, "hostname": "laptop"}}))
    sets = result_sets([cpu, gpu], [gpu_bench, other_bench], ["cpu", "gpu"])
    assert [(rs.label, rs.conformance is not None, [b.path.name for b in rs.benches]) for rs in sets] == [
        ("cpu", True, []), ("gpu", True, ["gpu-bench.json"]), ("AMD EPYC 9654 (laptop)", False, ["other-bench.json"])]


def test_one_run_in_several_bench_files_is_one_set(tmp_path: Path) -> None:
    """The GPU evidence writes attention and row operations to two files of one run: both join its set, each
    drawn with its own ceilings; a run of the same machine at another commit keeps a set of its own."""
    records = conformance_records("triton", device="cuda")
    records[0]["provenance"] = GPU_PROVENANCE
    gpu = write_jsonl(tmp_path / "gpu.jsonl", records)
    older = [dict(r) for r in records]
    older[0] = {**older[0], "provenance": {**GPU_PROVENANCE, "commit": "fedcba9876543210"}}
    old = write_jsonl(tmp_path / "old.jsonl", older)
    files = []
    for name, copy_gbps in (("attention.json", 4000.0), ("rows.json", 4321.0)):
        path = tmp_path / name
        path.write_text(json.dumps({**bench_data(("triton",), "cuda"), "provenance": GPU_PROVENANCE,
                                    "ceilings": {"copy_GBps": copy_gbps, "device": "NVIDIA H200"}}))
        files.append(path)
    sets = result_sets([old, gpu], files, ["old", "new"])
    assert [(rs.label, [b.path.name for b in rs.benches]) for rs in sets] == [
        ("old", []), ("new", ["attention.json", "rows.json"])]
    out = tmp_path / "site"
    build_site(sets, out, spec=SPEC)
    html = (out / "index.html").read_text()
    assert "new · <code>attention.json</code>" in html and "new · <code>rows.json</code>" in html
    assert "copy 4e+03 GB/s" in html and "copy 4.32e+03 GB/s" in html


def test_interrupted_run_still_renders(site: Path) -> None:
    html = (site / "index.html").read_text()
    assert "run did not finish" in html
    assert "the last line (truncated?) is not valid JSON" in html
    gpu_att1 = next((site / "cases").glob("set2-*/triton@cuda/ATT-1.html")).read_text()
    assert INTERRUPTED_REASON in gpu_att1 and "2048x2048" in gpu_att1


def test_empty_and_missing_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(bench_data())[:500])
    out = tmp_path / "out"
    build_site(result_sets([empty], [partial], []), out, spec=Spec())
    html = (out / "index.html").read_text()
    assert "no records: the run wrote nothing" in html
    assert "is not valid JSON" in html
    assert "No benchmark results." in html and "No conformance results." in html
    assert "No asv results" in html
    build_site([], out, spec=Spec())
    assert "No result files were given" in (out / "index.html").read_text()


def test_charts_are_inline_svg(site: Path) -> None:
    html = (site / "index.html").read_text()
    sections = {name: html[html.index(f'id="{name}"'):] for name in ("precision", "speed", "memory", "work-depth",
                                                                      "history")}
    for name, text in sections.items():
        assert text.index("<svg") < text.index("</section>"), name
    speed = sections["speed"][:sections["speed"].index("</section>")]
    assert "measured ceiling 1.5 TFLOP/s" in speed and "measured ceiling 20 GB/s" in speed  # chart legends
    assert "measured ceilings on cpu: matmul 1.5 TFLOP/s, copy 20 GB/s" in speed
    assert "attention_fwd · cpu · float32 · D=64 · causal" in speed
    assert 'class="flagged"' in speed and "suspicious: &gt; 10x over vendor" in speed
    assert "ATT-1 failed on this workload" in speed
    memory = sections["memory"][:sections["memory"].index("</section>")]
    assert "torch (slope 1)" in memory and "reference (slope 2)" in memory
    links = parse(site / "index.html")
    assert not [h for h in links.hrefs + links.srcs if "//" in h]  # nothing is loaded from the network


def test_work_depth_and_brent(site: Path) -> None:
    html = (site / "index.html").read_text()
    wd = html[html.index('id="work-depth"'):html.index('id="history"')]
    assert "pairwise tree" in wd
    # n = 1024 pairwise tree: W = 1023, D = 10; greedy steps against W/p + D for p = 1, 4, ..., 1024
    assert re.search(r'<td class="n">1024</td><td class="n">1023</td><td class="n">10</td>', wd)
    for steps in ("1023 ≤ 1033", "257 ≤ 265.75", "10 ≤ 10.999"):
        assert steps in wd, steps
    assert "✗" not in wd


def test_clause_page_states_the_clause_and_its_tests(site: Path) -> None:
    page = site / "clauses" / "ATT-1.html"
    text = page.read_text()
    assert "<code>out = softmax(scale * Q Kᵀ + bias) V</code> row-wise." in text
    assert "test_forward_matches_oracle" in text and "Second paragraph." in text
    assert all(t.is_file() for t in local_targets(page))
    assert "No test found for this clause." in (site / "clauses" / "GRAD-1.html").read_text()


def test_history_from_asv(site: Path) -> None:
    html = (site / "index.html").read_text()
    hist = html[html.index('id="history"'):]
    assert 'href="asv/index.html"' in hist and (site / "asv" / "index.html").is_file()
    # one series per backend (the first parameter), the geometric mean over workloads: torch 2 -> 2.4
    assert "bench_attention.TrackAttention.track_tflops [torch]</code></td><td>TFLOP/s</td>" in hist
    assert "<td class=\"n\">2</td><td class=\"n\">2.4</td>" in hist and "+20.0%" in hist
    # reference: only S=256 at the first commit (0.5), both at the second: sqrt(0.55 * 1.1) = 0.778
    assert "<td class=\"n\">0.5</td><td class=\"n\">0.778</td>" in hist
    assert "time_forward" not in hist  # throughput benchmarks are the headline when there are some
    # and the ratios to the kernels people use (the reference row never ran: no series)
    assert "track_vs_cudnn [torch]</code></td><td>ratio</td>" in hist and "track_vs_cudnn [reference]" not in hist


def test_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_jsonl(tmp_path / "c.jsonl", conformance_records())
    out = tmp_path / "site"
    assert build.main(["--conformance", str(conf), "--label", "mine", "--output", str(out)]) == 0
    assert "mine" in (out / "index.html").read_text()
    assert str(out / "index.html") in capsys.readouterr().out
    assert build.main(["--conformance", str(conf), str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_templates_autoescape() -> None:
    env = environment()
    assert env.from_string("{{ x }}").render(x=EVIL) == "&lt;script&gt;alert(1)&lt;/script&gt;"
