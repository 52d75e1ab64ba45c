"""``benchmarks.kernel_tools.profile_kernels`` without a GPU: ncu's raw-page CSV read into launch records, the
limit rule, the targets' cases, and the driver through its command line with fake ``ncu`` executables (one
that fails, one that prints no CSV, one that names an unknown metric and then answers, one that hangs)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.kernel_tools import profile_targets
from benchmarks.kernel_tools.ncu_report import (
    KernelProfile,
    NcuOutputError,
    by_case,
    classify,
    parse_raw_csv,
    unknown_metrics,
)
from benchmarks.kernel_tools.profile_targets import FULL, MARKER_NAME, SMALL, TARGETS, attention_shapes
from implementations.torch_sdpa.cpu import TorchCPUBackend
from tests.interrupting import interrupt_once_started

ROOT = Path(__file__).resolve().parents[1]
STALL = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
IDENTITY = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
            "Grid Size", "Device", "CC"]
METRIC_UNITS = [
    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "%"), ("gpu__time_duration.sum", "usecond"),
    ("launch__occupancy_limit_blocks", "block"), ("launch__occupancy_limit_registers", "block"),
    ("launch__occupancy_limit_shared_mem", "block"), ("launch__occupancy_limit_warps", "block"),
    ("launch__registers_per_thread", "register/thread"), ("launch__shared_mem_per_block_dynamic", "byte/block"),
    ("launch__shared_mem_per_block_static", "byte/block"),
    ("sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active", "%"),
    ("sm__maximum_warps_per_active_cycle_pct", "%"),
    ("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active", "%"),
    ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "%"),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "%"),
    (STALL.format("barrier"), "inst"), (STALL.format("long_scoreboard"), "inst"), (STALL.format("selected"), "inst"),
    ("smsp__issue_active.avg.pct_of_peak_sustained_active", "%"),
]
MARKER = ["0", "0", "0", "32", "32", "64", "16", "0", "0", "0", "0", "0", "2.1", "0.5", "0", "0", "1", "1.2"]
#: attention-like: tensor pipe 65.99% (under 70), registers and shared memory both allow 1 block per SM
ATTENTION = ["3.5", "2,345.6", "32", "1", "1", "8", "188", "230,400", "0", "34.05", "12.50", "65.99", "71.2",
             "12.31", "2.46", "0.21", "1", "40.1"]
#: KD-like: DRAM 85.12% of peak, tensor pipe n/a, 10 ms as "10,000.5" microseconds
KD = ["85.12", "10,000.5", "32", "8", "16", "4", "40", "0", "1,024", "5.5", "50", "n/a", "33.3", "45.6", "0.1",
      "7.25", "1", "20"]
FILL = ["60", "120", "32", "16", "32", "16", "16", "0", "0", "0", "100", "0", "20", "80", "0", "3", "1", "10"]


def quoted(cells: list[str]) -> str:
    return ",".join(f'"{cell}"' for cell in cells)


def launch_row(n: int, kernel: str, values: list[str]) -> str:
    return quoted([str(n), "4242", "python3.12", "127.0.0.1", kernel, "1", "7", "(256, 1, 1)", "(128, 16, 1)",
                   "0", "9.0", *values])


def fixture_csv() -> str:
    """What ``ncu --csv --page raw`` prints for two cases (marker, kernel; marker, fill, kernel), with the
    program's and ncu's own lines before and after it."""
    return "\n".join([
        "==PROF== Connected to process 4242 (/usr/bin/python3.12)",
        "triton-kd N8192-V131072-fp32: profiled",
        "==PROF== Profiling \"case_marker\" - 0: 0%....50%....100% - 9 passes",
        "==PROF== Disconnected from process 4242",
        quoted(IDENTITY + [name for name, _ in METRIC_UNITS]),
        quoted([""] * len(IDENTITY) + [unit for _, unit in METRIC_UNITS]),
        launch_row(0, MARKER_NAME, MARKER),
        launch_row(1, "attention_forward_kernel", ATTENTION),
        launch_row(2, MARKER_NAME, MARKER),
        launch_row(3, "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>>(int, T2)",
                   FILL),
        launch_row(4, "kd_loss_kernel", KD),
        "==PROF== Report: none",
    ]) + "\n"


def test_raw_csv_is_read_into_launches_with_units_and_separators() -> None:
    launches = parse_raw_csv(fixture_csv())
    assert [launch.kernel.split("<")[0] for launch in launches] == [
        MARKER_NAME, "attention_forward_kernel", MARKER_NAME, "void at::native::vectorized_elementwise_kernel",
        "kd_loss_kernel"]
    records = by_case(launches, ["first", "second"], MARKER_NAME)
    assert [(r.case, r.kernel[:14]) for r in records] == [
        ("first", "attention_forw"), ("second", "void at::nativ"), ("second", "kd_loss_kernel")]
    attention, _, kd = records
    assert attention.duration_us == pytest.approx(2345.6) and kd.duration_us == pytest.approx(10000.5)
    assert attention.shared_memory_per_block_bytes == 230400 and kd.shared_memory_per_block_bytes == 1024
    assert attention.registers_per_thread == 188 and attention.block == "(256, 1, 1)"
    assert attention.occupancy_limiters == ["registers", "shared memory"] and kd.occupancy_limiters == ["warps"]
    assert (attention.theoretical_occupancy_pct, attention.achieved_occupancy_pct) == (12.5, 12.31)
    assert kd.tensor_pipe_pct is None and kd.dram_throughput_pct == 85.12
    assert list(kd.stalls) == ["long_scoreboard", "selected", "barrier"] and kd.stalls["long_scoreboard"] == 7.25


def test_limit_rule_names_the_first_bound_that_holds() -> None:
    records = {r.kernel[:4]: r for r in by_case(parse_raw_csv(fixture_csv()), ["a", "b"], MARKER_NAME)}
    assert records["kd_l"].limit == "memory bandwidth: DRAM 85% of peak"
    assert records["atte"].limit == ("latency: most stalled on barrier (2.46 cycles per issue); achieved occupancy "
                                     "12% of 12% theoretical, limited by registers and shared memory")
    base = records["atte"]
    assert classify(replace(base, tensor_pipe_pct=70.0)) == "tensor pipe: 70% active"
    assert classify(replace(base, xu_pipe_pct=75.0)).startswith("XU pipe: 75%")
    assert classify(replace(base, issue_slots_busy_pct=90.0)).startswith("instruction issue: 90%")
    only_selected = replace(base, stalls={"selected": 1.0}, achieved_occupancy_pct=None)
    assert classify(only_selected) == "unknown: ncu reported none of the metrics the rule reads"


def test_a_repeated_header_and_units_row_are_not_launches() -> None:
    lines = fixture_csv().splitlines()
    header, units = lines[4], lines[5]
    again = "\n".join([*lines[:8], header, units, *lines[8:]])
    assert [launch.kernel for launch in parse_raw_csv(again)] == [launch.kernel for launch in
                                                                 parse_raw_csv(fixture_csv())]


def test_output_without_the_header_row_or_a_kernel_column_is_refused() -> None:
    with pytest.raises(NcuOutputError, match="no raw-page CSV header"):
        parse_raw_csv("==PROF== Connected\n==ERROR== The application returned an error code (1).\n")
    with pytest.raises(NcuOutputError, match="names no kernel"):
        parse_raw_csv('"ID","Process ID","gpu__time_duration.sum"\n"","","nsecond"\n"0","1","5"\n')


def test_unknown_metrics_are_those_an_error_line_names() -> None:
    output = "==ERROR== Failed to find metric launch__occupancy_limit_blocks\nlaunch__registers_per_thread ok"
    requested = ["launch__occupancy_limit_blocks", "launch__registers_per_thread", r"regex:smsp__x_.*\.ratio"]
    assert unknown_metrics(output, requested) == ["launch__occupancy_limit_blocks"]
    assert unknown_metrics(r"==ERROR== no metric matches smsp__x_.*\.ratio", requested) == [requested[2]]


def test_targets_and_their_cases() -> None:
    assert set(TARGETS) == {"triton-fwd", "cupy-fwd", "triton-bwd", "cupy-bwd", "triton-kd", "cupy-kd"}
    fwd = [case.label for case in TARGETS["triton-fwd"](FULL)]
    assert fwd == [f"S{S}-D{D}-{c}" for D in (64, 128) for S in (4096, 16384) for c in ("full", "causal")]
    assert fwd == [case.label for case in TARGETS["cupy-fwd"](FULL)]
    assert [case.label for case in TARGETS["cupy-bwd"](FULL)] == [
        f"S{S}-D128-{c}" for S in (4096, 16384) for c in ("full", "causal")]
    assert [case.label for case in TARGETS["triton-kd"](FULL)] == ["N8192-V131072-fp32", "N8192-V131072-bf16"]
    for shape in attention_shapes(FULL, "fwd_dims"):
        B, H, S, D = shape.shape
        assert (B * S, H * D) == (16384, 2048)


def fake_ncu(folder: Path, body: str) -> dict[str, str]:
    """An environment whose PATH finds ``folder/ncu``, a Python script running ``body`` (``args`` holds
    its arguments); ``--version`` prints a version line."""
    script = folder / "ncu"
    script.write_text(f"#!{sys.executable}\nimport sys, time\nargs = sys.argv[1:]\n"
                      "if args == ['--version']:\n    print('Version 2025.9.9 (fake)'); sys.exit(0)\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def run_driver(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_tools.profile_kernels", "--out", str(out),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_a_failing_ncu_is_recorded_per_target(tmp_path: Path) -> None:
    env = fake_ncu(tmp_path, "print('garbage ,,, \"ID\"'); print('==ERROR== ERR_NVGPUCTRPERM', file=sys.stderr)\n"
                             "sys.exit(1)\n")
    done, doc = run_driver(tmp_path, env, "--sections", "triton-kd,cupy-fwd")
    assert done.returncode == 1
    assert doc["ncu"]["version"] == "Version 2025.9.9 (fake)" and doc["limit_rule"]
    for name in ("triton-kd", "cupy-fwd"):
        target = doc["targets"][name]
        assert target["error"].startswith("ncu exited 1 (==ERROR== ERR_NVGPUCTRPERM); no raw-page CSV header")
        assert target["kernels"] == [] and "garbage" in target["csv"] and target["returncode"] == 1
    assert doc["targets"]["cupy-fwd"]["command"][-2:] == ["--run", "cupy-fwd"]


def test_output_with_no_csv_and_a_missing_ncu_are_errors(tmp_path: Path) -> None:
    env = fake_ncu(tmp_path, "print('==PROF== nothing profiled')\n")
    done, doc = run_driver(tmp_path, env, "--sections", "triton-kd")
    assert done.returncode == 1 and doc["targets"]["triton-kd"]["error"].startswith("no raw-page CSV header")
    done, doc = run_driver(tmp_path, env, "--sections", "triton-kd", "--ncu", str(tmp_path / "absent"))
    assert done.returncode == 1 and doc["ncu"]["version"].startswith("unavailable")
    assert doc["targets"]["triton-kd"]["error"].startswith("ncu could not start")


def test_an_unknown_metric_is_dropped_and_the_target_runs_again(tmp_path: Path) -> None:
    (tmp_path / "raw.csv").write_text(fixture_csv())
    env = fake_ncu(tmp_path, (
        "metrics = args[args.index('--metrics') + 1].split(',')\n"
        "if 'launch__occupancy_limit_blocks' in metrics:\n"
        "    print('==ERROR== Failed to find metric launch__occupancy_limit_blocks', file=sys.stderr)\n"
        "    sys.exit(1)\n"
        f"print(open({str(tmp_path / 'raw.csv')!r}).read())\n"))
    done, doc = run_driver(tmp_path, env, "--sections", "triton-kd")
    assert done.returncode == 0, done.stderr[-2000:]
    target = doc["targets"]["triton-kd"]
    assert target["error"] is None and target["dropped_metrics"] == ["launch__occupancy_limit_blocks"]
    assert "launch__occupancy_limit_blocks" not in target["command"][target["command"].index("--metrics") + 1]
    assert [(k["case"], k["kernel"][:7]) for k in target["kernels"]] == [
        ("N8192-V131072-fp32", "attenti"), ("N8192-V131072-bf16", "void at"), ("N8192-V131072-bf16", "kd_loss")]
    assert target["kernels"][2]["limit"].startswith("memory bandwidth")
    assert set(target["kernels"][0]) == {f.name for f in KernelProfile.__dataclass_fields__.values()}


def test_reparse_derives_the_records_again_from_the_kept_output(tmp_path: Path) -> None:
    """``--reparse`` needs no ncu: the records come back from the CSV kept in the file; a target whose ncu
    printed nothing keeps its error."""
    (tmp_path / "raw.csv").write_text(fixture_csv())
    env = fake_ncu(tmp_path, f"print(open({str(tmp_path / 'raw.csv')!r}).read())\n")
    _, doc = run_driver(tmp_path, env, "--sections", "triton-kd")
    path = tmp_path / "profile.json"
    damaged = json.loads(json.dumps(doc))
    damaged["targets"]["triton-kd"]["kernels"] = []
    damaged["targets"]["cupy-kd"] = {"cases": ["x"], "returncode": None, "csv": "", "stderr_tail": "",
                                     "error": "interrupted (SIGINT) before ncu finished", "kernels": []}
    path.write_text(json.dumps(damaged))
    no_ncu = {**os.environ, "PATH": os.defpath}
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_tools.profile_kernels", "--reparse", "--out",
                           str(path)], cwd=ROOT, env=no_ncu, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    again = json.loads(path.read_text())
    assert again["targets"]["triton-kd"] == doc["targets"]["triton-kd"]
    assert again["targets"]["cupy-kd"] == damaged["targets"]["cupy-kd"]


def test_a_target_past_its_limit_is_killed_and_recorded(tmp_path: Path) -> None:
    env = fake_ncu(tmp_path, "print('started', flush=True); time.sleep(60)\n")
    done, doc = run_driver(tmp_path, env, "--sections", "triton-kd", "--target-seconds", "3")
    target = doc["targets"]["triton-kd"]
    assert done.returncode == 1 and target["error"].startswith("ncu was killed at the time limit")
    assert target["seconds"] < 30 and "started" in target["csv"]


def test_an_interrupted_driver_kills_ncu_and_records_the_target(tmp_path: Path) -> None:
    """The step's limit interrupts the driver (``timeout --signal=INT``): ncu, in a session of its own, goes
    with it, and the target being profiled is recorded as interrupted; the driver is started with SIGINT
    ignored, as a script's background job is, and must take the interrupt all the same."""
    pid_file = tmp_path / "ncu.pid"
    # ncu would run for an hour: a driver that waited for it instead of killing it cannot pass
    env = fake_ncu(tmp_path, f"import os; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(3600)\n")
    out = tmp_path / "profile.json"
    done = interrupt_once_started([sys.executable, "-m", "benchmarks.kernel_tools.profile_kernels", "--out", str(out),
                                   "--sections", "triton-kd,cupy-kd"], env, ROOT, pid_file)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not done.child_alive
    targets = json.loads(out.read_text())["targets"]
    assert list(targets) == ["triton-kd"] and targets["triton-kd"]["error"].startswith("interrupted")
    assert targets["triton-kd"]["cases"] == ["N8192-V131072-fp32", "N8192-V131072-bf16"]


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_tools.profile_kernels", "--sections", "nope",
                           "--out", str(tmp_path / "p.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unknown targets ['nope']" in done.stderr
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("name", ["triton-fwd", "triton-bwd", "triton-kd"])
def test_run_mode_profiles_every_case_on_the_interpreter(name: str) -> None:
    """``--run`` is what ncu starts; on the CPU (Triton interpreter, --small) it runs each case's kernels."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_tools.profile_kernels", "--run", name,
                           "--small"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    assert [line.split(":")[0] for line in done.stderr.splitlines() if line.endswith("profiled")] == [
        f"{name} {case.label}" for case in TARGETS[name](SMALL)]


def test_a_failing_case_keeps_its_marker_and_the_target_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The k-th marker must open the k-th case even when a case before it failed to build or to run."""
    launches: list[str] = []

    class Marker:
        def __getitem__(self, grid: tuple[int]) -> object:
            return lambda mark: launches.append("marker")

    def case(label: str, build_fails: bool = False, run_fails: bool = False) -> profile_targets.Case:
        def call() -> None:
            launches.append(label)
            if run_fails and launches.count(label) == 2:  # the profiled run, not the warm-up
                raise RuntimeError("out of memory")

        def build() -> object:
            if build_fails:
                raise ValueError("no such kernel")
            return call
        return profile_targets.Case(label, build)

    cases = [case("a"), case("b", build_fails=True), case("c", run_fails=True), case("d")]
    monkeypatch.setattr(profile_targets, "case_marker", Marker())
    monkeypatch.setitem(profile_targets.TARGETS, "fake", lambda sizes: cases)
    assert profile_targets.run_target("fake", SMALL) == ["b", "c"]
    assert launches == ["marker", "a", "marker", "a", "marker", "c", "marker", "c", "d", "marker", "d"]
    err = capsys.readouterr().err
    assert "ValueError: no such kernel" in err and "RuntimeError: out of memory" in err
    assert "fake d: profiled" in err and "fake b: no launches profiled" in err


@pytest.mark.parametrize("name", ["cupy-fwd", "cupy-bwd", "cupy-kd"])
def test_cupy_targets_call_the_backend_contract(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The CuPy targets call the backend's contract methods as the contract spells them: checked on the CPU
    with torch's backend standing in for CuPy's (small sizes)."""
    monkeypatch.setattr(profile_targets, "_cupy_backend", TorchCPUBackend)
    for case in TARGETS[name](SMALL):
        outputs = case.build()()
        assert outputs and all(bool(torch.isfinite(x).all()) for x in outputs), case.label
