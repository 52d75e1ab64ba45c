"""The report in a real browser: Debian's chromium, headless, driven by Playwright's Python package.

Builds a report from the fixtures of test_report.py, opens index.html over file://, checks that the matrix,
a chart and the provenance render, follows a drill-down link, and saves screenshots to
results/report-screenshots/ (a CI artifact; not reports/out/, which holds only what ``attnspec report``
makes). Skipped when /usr/bin/chromium (apt: chromium) or the ``playwright`` package (pip) is missing;
``playwright install`` is never needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reports.asv import load_asv
from reports.load import result_sets
from reports.site import build_site
from tests.test_report import EVIL, GPU_PROVENANCE, SPEC, bench_data, conformance_records, write_asv, write_jsonl

CHROMIUM = Path(os.environ.get("ATTNSPEC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "results" / "report-screenshots"

if not CHROMIUM.is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set ATTNSPEC_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright package (pip install playwright)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless chromium for the module."""
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def build(tmp_path: Path, backend: str = "torch") -> Path:
    """A two-machine report (CPU: conformance + bench; GPU: conformance) with asv history; its index.html."""
    cpu = write_jsonl(tmp_path / "cpu.jsonl", conformance_records(backend))
    gpu_records = conformance_records("triton", device="cuda")
    gpu_records[0]["provenance"] = GPU_PROVENANCE
    gpu = write_jsonl(tmp_path / "gpu.jsonl", gpu_records)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(bench_data((backend, "reference"))))
    sets = result_sets([cpu, gpu], [bench], ["CPU (ci-box)", "H200 (committed run)"])
    return build_site(sets, tmp_path / "out", spec=SPEC, asv=load_asv(write_asv(tmp_path / "asv")))


def test_report_renders_and_drills_down(browser: object, tmp_path: Path) -> None:
    index = build(tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    failed_requests: list[str] = []
    page.on("requestfailed", lambda req: failed_requests.append(req.url))
    page.goto(index.as_uri())

    matrix = page.locator("table.matrix").first
    assert matrix.is_visible()
    assert page.locator("table.matrix th.rowhead", has_text="torch@cpu").count() >= 1
    assert page.locator("table.matrix th.rowhead", has_text="triton@cuda").count() >= 1
    assert page.locator("tr.group", has_text="H200 (committed run)").count() == 3
    torch_row = page.locator("table.matrix tr", has=page.locator("th.rowhead", has_text="torch@cpu")).first
    att1 = torch_row.locator("td.cell").first  # ATT-1: passes, a failure, an unsupported case, an interrupted one
    assert "st-interrupted" in att1.get_attribute("class")
    title = att1.get_attribute("title")
    assert "err 5e-06 > bound 2.1e-06" in title and "D=59 is not a multiple of 8" in title

    chart = page.locator("#speed figure.chart svg").first
    box = chart.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 150
    assert page.locator("#precision svg, #memory svg, #work-depth svg, #history svg").count() >= 4

    provenance = page.locator("#provenance")
    assert provenance.is_visible()
    text = provenance.inner_text()
    assert "NVIDIA H200" in text and "580.65" in text and "ci-box" in text and "0123456789ab" in text

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "index.png"), full_page=True)

    att1.locator("a").click()
    page.wait_for_load_state()
    assert "/cases/" in page.url and page.url.endswith("/ATT-1.html")
    assert page.locator("h1").inner_text().startswith("ATT-1: forward output")
    rows = page.locator("table.cases tbody tr")
    assert rows.count() == 15
    assert "interrupted" in rows.nth(0).inner_text() and "2048x2048" in rows.nth(0).inner_text()
    assert "failed" in rows.nth(1).inner_text() and "err 5e-06 > bound 2.1e-06" in rows.nth(1).inner_text()
    assert rows.nth(1).locator("td.repro code").inner_text() == \
        "attnspec conformance --backend torch -k 'ATT-1[torch-cpu-float32-B1H2-120x203-D59]'"
    assert "ci-box" in page.locator("#provenance").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "drill-down.png"), full_page=True)

    page.locator(".crumbs a", has_text="ATT-1").click()
    page.wait_for_load_state()
    assert "test_forward_matches_oracle" in page.locator("main").inner_text()
    assert not failed_requests, failed_requests
    page.close()


def test_backend_strings_do_not_run_as_script(browser: object, tmp_path: Path) -> None:
    index = build(tmp_path, backend=EVIL)
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(index.as_uri())
    assert page.locator("table.matrix th.rowhead", has_text=f"{EVIL}@cpu").count() >= 1  # shown as text
    page.locator("td.cell a").first.click()
    page.wait_for_load_state()
    assert EVIL in page.locator("h1").inner_text()
    assert page.locator("script").count() == 0 and not dialogs
    page.close()
