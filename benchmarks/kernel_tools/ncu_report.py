"""Nsight Compute's ``--csv --page raw`` output read into one record per kernel launch, and the rule that names
what limits each kernel (``profile_kernels`` runs ncu; this module only reads what it printed).

The raw page is a header row of column names (the launch's identity: "ID", "Kernel Name", "Block Size",
"Grid Size", ..., then one column per metric), a row of units (empty under the identity columns), and one row
per profiled launch in launch order. Numbers carry thousands separators ("1,234.5"); a metric ncu could not
collect reads "n/a". Lines before the header (ncu's ``==PROF==`` messages, the program's own output) and rows
that do not have the header's width are not launches.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

#: the metrics every launch is profiled with (names as ncu 2025 knows them on sm_90), plus STALL_REGEX
METRICS: tuple[str, ...] = (
    "launch__registers_per_thread", "launch__shared_mem_per_block_dynamic", "launch__shared_mem_per_block_static",
    "launch__occupancy_limit_registers", "launch__occupancy_limit_shared_mem", "launch__occupancy_limit_warps",
    "launch__occupancy_limit_blocks", "sm__maximum_warps_per_active_cycle_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active", "gpu__time_duration.sum",
    "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active",
    "smsp__issue_active.avg.pct_of_peak_sustained_active", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
)
#: every warp-stall reason, in cycles a warp waits per issued instruction (ncu expands the regex)
STALL_REGEX = r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
STALL_COLUMN = re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$")
#: the header's kernel-name column, by preference
KERNEL_NAME_COLUMNS = ("Kernel Name", "Demangled Name", "Function Name")
#: the resource behind each ``launch__occupancy_limit_*`` metric (blocks per SM that resource allows)
OCCUPANCY_LIMITS = {"launch__occupancy_limit_registers": "registers",
                    "launch__occupancy_limit_shared_mem": "shared memory",
                    "launch__occupancy_limit_warps": "warps", "launch__occupancy_limit_blocks": "blocks"}
#: microseconds per unit of a duration, bytes per unit of a size (ncu prints base units with
#: ``--print-units base``; scaled ones are converted all the same)
MICROSECONDS = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
                "second": 1e6, "s": 1e6}
BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "KB": 1e3, "MB": 1e6, "Kibyte": 1024, "KiB": 1024,
         "Mibyte": 1 << 20, "MiB": 1 << 20}

#: the thresholds of :func:`classify`, in percent of peak
DRAM_BOUND_PCT = 80.0
TENSOR_BOUND_PCT = 70.0
XU_BOUND_PCT = 70.0
ISSUE_BOUND_PCT = 80.0
#: the stall reason that is the issue itself (a warp picked to issue), not a wait
NOT_A_STALL = "selected"
LIMIT_RULE = (
    f"first that holds: DRAM throughput >= {DRAM_BOUND_PCT:g}% of peak -> 'memory bandwidth'; tensor pipe active "
    f">= {TENSOR_BOUND_PCT:g}% -> 'tensor pipe'; XU (MUFU) pipe >= {XU_BOUND_PCT:g}% -> 'XU pipe'; issue slots "
    f"busy >= {ISSUE_BOUND_PCT:g}% -> 'instruction issue'; else 'latency': the stall reason with the most cycles "
    f"per issued instruction ('{NOT_A_STALL}', the issue itself, left out), with achieved against theoretical "
    "occupancy and the resource that limits the theoretical one (fewest blocks per SM); a metric ncu did not "
    "report skips its test")


class NcuOutputError(ValueError):
    """ncu's output holds no raw-page CSV."""


@dataclass(frozen=True)
class RawLaunch:
    """One data row of the raw page: the kernel's name, launch shape, and each metric's text and unit."""

    kernel: str
    block: str
    grid: str
    values: dict[str, str]
    units: dict[str, str]

    def number(self, metric: str) -> float | None:
        """The metric as a number (thousands separators dropped); None where absent or not a number."""
        return number(self.values.get(metric, ""))


@dataclass(frozen=True)
class KernelProfile:
    """What ncu measured of one launch, in the units named by the fields; None where ncu did not report it."""

    #: the target's case the launch belongs to (None: before the first case marker)
    case: str | None
    kernel: str
    block: str
    grid: str
    registers_per_thread: float | None
    shared_memory_per_block_bytes: float | None
    theoretical_occupancy_pct: float | None
    achieved_occupancy_pct: float | None
    #: the resources allowing the fewest blocks per SM (ties all named)
    occupancy_limiters: list[str]
    duration_us: float | None
    tensor_pipe_pct: float | None
    xu_pipe_pct: float | None
    issue_slots_busy_pct: float | None
    sm_throughput_pct: float | None
    dram_throughput_pct: float | None
    #: cycles per issued instruction by stall reason, largest first
    stalls: dict[str, float] = field(default_factory=dict)
    #: one line from :data:`LIMIT_RULE`
    limit: str = ""


def number(text: str) -> float | None:
    """``"1,234.5"`` -> 1234.5; ``"n/a"``, empty or other text -> None."""
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def parse_raw_csv(text: str) -> list[RawLaunch]:
    """The launches of ncu's ``--csv --page raw`` output, in launch order: the rows of the header's width whose
    "ID" is a number (a repeated header or units row is not one); :class:`NcuOutputError` if no line is the
    header row or the header names no kernel column."""
    lines = text.splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith('"ID",')), None)
    if start is None:
        raise NcuOutputError("no raw-page CSV header (a line starting with '\"ID\",') in ncu's output")
    rows = [row for row in csv.reader(lines[start:]) if row]
    header = rows[0]
    rows = [row for row in rows[1:] if len(row) == len(header)]
    units = next((row for row in rows if row[0] == ""), [""] * len(header))
    column = {name: n for n, name in enumerate(header)}
    name_column = next((name for name in KERNEL_NAME_COLUMNS if name in column), None)
    if name_column is None:
        raise NcuOutputError(f"the CSV header names no kernel ({' or '.join(KERNEL_NAME_COLUMNS)}): {header[:12]}")
    metric_columns = [n for n, name in enumerate(header) if "__" in name]

    def cell(row: list[str], name: str) -> str:
        return row[column[name]] if name in column else ""

    return [RawLaunch(kernel=cell(row, name_column), block=cell(row, "Block Size"), grid=cell(row, "Grid Size"),
                      values={header[n]: row[n] for n in metric_columns},
                      units={header[n]: units[n] for n in metric_columns}) for row in rows if row[0].isdigit()]


def _scaled(launch: RawLaunch, metric: str, scale: dict[str, float]) -> float | None:
    value = launch.number(metric)
    factor = scale.get(launch.units.get(metric, "").removesuffix("/block"))  # ncu 2025.3: "byte/block"
    return None if value is None or factor is None else value * factor


def _shared_memory(launch: RawLaunch) -> float | None:
    parts = [_scaled(launch, f"launch__shared_mem_per_block_{kind}", BYTES) for kind in ("static", "dynamic")]
    known = [part for part in parts if part is not None]
    return sum(known) if known else None


def _limiters(launch: RawLaunch) -> list[str]:
    blocks = {name: launch.number(metric) for metric, name in OCCUPANCY_LIMITS.items()}
    known = {name: value for name, value in blocks.items() if value is not None}
    fewest = min(known.values(), default=None)
    return [name for name, value in known.items() if value == fewest]


def _stalls(launch: RawLaunch) -> dict[str, float]:
    found = {}
    for metric in launch.values:
        match = STALL_COLUMN.match(metric)
        value = launch.number(metric)
        if match and value is not None:
            found[match.group(1)] = value
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def profile(launch: RawLaunch, case: str | None) -> KernelProfile:
    """The launch's record, its ``limit`` classified by :func:`classify`."""
    pct = launch.number
    record = KernelProfile(
        case=case, kernel=launch.kernel, block=launch.block, grid=launch.grid,
        registers_per_thread=pct("launch__registers_per_thread"),
        shared_memory_per_block_bytes=_shared_memory(launch),
        theoretical_occupancy_pct=pct("sm__maximum_warps_per_active_cycle_pct"),
        achieved_occupancy_pct=pct("sm__warps_active.avg.pct_of_peak_sustained_active"),
        occupancy_limiters=_limiters(launch),
        duration_us=_scaled(launch, "gpu__time_duration.sum", MICROSECONDS),
        tensor_pipe_pct=pct("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
        xu_pipe_pct=pct("sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"),
        issue_slots_busy_pct=pct("smsp__issue_active.avg.pct_of_peak_sustained_active"),
        sm_throughput_pct=pct("sm__throughput.avg.pct_of_peak_sustained_elapsed"),
        dram_throughput_pct=pct("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
        stalls=_stalls(launch))
    return replace(record, limit=classify(record))


def _at_least(value: float | None, threshold: float) -> bool:
    return value is not None and value >= threshold


def classify(p: KernelProfile) -> str:
    """What limits the kernel, by :data:`LIMIT_RULE`."""
    if _at_least(p.dram_throughput_pct, DRAM_BOUND_PCT):
        return f"memory bandwidth: DRAM {p.dram_throughput_pct:.0f}% of peak"
    if _at_least(p.tensor_pipe_pct, TENSOR_BOUND_PCT):
        return f"tensor pipe: {p.tensor_pipe_pct:.0f}% active"
    if _at_least(p.xu_pipe_pct, XU_BOUND_PCT):
        return f"XU pipe: {p.xu_pipe_pct:.0f}% of peak"
    if _at_least(p.issue_slots_busy_pct, ISSUE_BOUND_PCT):
        return f"instruction issue: {p.issue_slots_busy_pct:.0f}% of issue slots busy"
    waits = {reason: cycles for reason, cycles in p.stalls.items() if reason != NOT_A_STALL}
    parts = []
    if waits:
        reason = max(waits, key=waits.__getitem__)
        parts.append(f"most stalled on {reason} ({waits[reason]:.2f} cycles per issue)")
    if p.achieved_occupancy_pct is not None and p.theoretical_occupancy_pct is not None:
        limiters = f", limited by {' and '.join(p.occupancy_limiters)}" if p.occupancy_limiters else ""
        parts.append(f"achieved occupancy {p.achieved_occupancy_pct:.0f}% of {p.theoretical_occupancy_pct:.0f}% "
                     f"theoretical{limiters}")
    return "latency: " + "; ".join(parts) if parts else "unknown: ncu reported none of the metrics the rule reads"


def by_case(launches: Sequence[RawLaunch], cases: Sequence[str], marker: str) -> list[KernelProfile]:
    """The launches' records, each under the case whose marker launch (a kernel named ``marker``) came last
    before it; the markers themselves are left out (the k-th marker opens ``cases[k]``)."""
    records, current, seen = [], None, 0
    for launch in launches:
        if marker in launch.kernel:
            current = cases[seen] if seen < len(cases) else f"(marker {seen + 1} of {len(cases)} cases)"
            seen += 1
        else:
            records.append(profile(launch, current))
    return records


def unknown_metrics(output: str, requested: Sequence[str]) -> list[str]:
    """The requested metrics (regex ones by their pattern too) that an ``==ERROR==`` line of ncu names."""
    errors = [line for line in output.splitlines() if "==ERROR==" in line]
    return [metric for metric in requested
            if any(metric in line or metric.removeprefix("regex:") in line for line in errors)]
