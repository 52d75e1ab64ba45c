"""The pytest plugin of the conformance suite.

Options: ``--backend NAME|module:factory`` (repeatable; default every available backend), ``--quick``,
``--clause ID|AREA`` (repeatable), ``--results PATH`` (JSON lines, written as the run goes), ``--xfails-file PATH``
(repeatable), ``--seed``, ``--case-timeout SECONDS``, ``--device cpu|cuda``, ``--resume``; and, for the
supervisor, ``--run-id``, ``--run-started`` and ``--factory``.

A conformance test is marked with its clause (``@clause("ATT-1")``) and with the cases it runs
(``@cases(op, generator)``); the plugin crosses the generator's cases with every selected backend and device
and hands the test a :class:`Trial`. A case the backend declares unsupported is skipped with status
*unsupported* and the backend's reasons; a missing operation is *not_implemented*.

Test ids read ``ATT-1[triton-cuda-bfloat16-B2H4-113x203-D59-causal_br]``; pytest's node ids begin with the test
function's name, so the clause id and the test id are added to each item's keywords (``-k ATT-4`` selects by
substring, ``--clause ATT-4`` exactly).

Only a real SIGINT or SIGTERM interrupts a run: a backend that raises ``KeyboardInterrupt`` itself fails its
case, and the ``end`` record says how the run ended.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import signal
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from conformance import cases as casegen
from conformance.provenance import collect, now
from conformance.results import Status
from conformance.spec import CLAUSES, clause_of
from conformance.trial import NotImplementedOperation, Trial, Unsupported
from implementations.base import dtype_name
from implementations.registry import RegistryEntry, discover, select

#: xfails shipped for the built-in backends (their known deviations, each with its finding), always read
BUILTIN_XFAILS = sorted(Path(__file__).with_name("xfails").glob("*.txt"))
TIMEOUT_EXIT = 3

# ---------------------------------------------------------------------------------------------
# Results file


class ResultsWriter:
    """Appends JSON lines, flushed one by one, so a crash loses at most the case in flight."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, default=_json_default, allow_nan=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _json_default(x: object) -> object:
    if isinstance(x, torch.dtype):
        return dtype_name(x)
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: encode them as strings."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def done_ids(path: Path) -> set[str]:
    """Ids that already have a final record in a results file (for ``--resume``)."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("kind") == "case":
            ids.add(rec["id"])
    return ids


# ---------------------------------------------------------------------------------------------
# xfails


def read_xfails(paths: list[str]) -> dict[str, str]:
    """``{id pattern: reason}`` from xfails files: one id per line (``*`` and ``?`` are wildcards),
    ``# reason`` after it. A file that cannot be read is a usage error."""
    patterns: dict[str, str] = {}
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise pytest.UsageError(f"cannot read xfails file {p}: {exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            text, _, comment = line.partition("#")
            if text.strip():
                patterns[text.strip()] = comment.strip() or f"listed in {p}:{n}"
    return patterns


# ---------------------------------------------------------------------------------------------
# pytest hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnspec", "attnspec conformance")
    group.addoption("--backend", action="append", default=[], metavar="NAME",
                    help="backend name or package.module:factory (repeatable; default: all available)")
    group.addoption("--quick", action="store_true", help="small shapes and few head dims")
    group.addoption("--results", default=None, metavar="PATH", help="append JSON-lines results to PATH")
    group.addoption("--xfails-file", action="append", default=[], metavar="PATH",
                    help="file of test ids expected to fail ('*' wildcards, '# reason' after each); "
                         "conformance/xfails/*.txt are read too unless --no-builtin-xfails")
    group.addoption("--no-builtin-xfails", action="store_true",
                    help="do not read the xfails shipped for the built-in backends")
    group.addoption("--seed", type=int, default=0, help="base seed mixed into every case's seed")
    group.addoption("--case-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="record a case as timeout and stop the process when it runs longer")
    group.addoption("--device", action="append", default=[], choices=["cpu", "cuda"],
                    help="only run on these devices (default: every device a backend declares and is here)")
    group.addoption("--resume", action="store_true", help="skip ids already recorded in --results")
    group.addoption("--run-id", default=None, help="run id written into results (default: a new one)")
    group.addoption("--run-started", default=None, metavar="ISO-8601",
                    help="start of the whole run, written as the run record's 'started' (default: now)")
    group.addoption("--clause", action="append", default=[], metavar="ID",
                    help="run only this clause (ATT-4) or area (ATT); repeatable")
    group.addoption("--factory", action="append", default=[], metavar="MODULE:FACTORY",
                    help="call only these registry factories (default: every one)")
    group.addoption("--every-case", action="store_true",
                    help="give backends that declare an emulator (Triton's interpreter) every case of a clause, "
                         f"not {casegen.EMULATED_SAMPLE} spread over them")


@dataclass
class _State:
    entries: list[RegistryEntry]
    writer: ResultsWriter
    run_id: str
    xfails: dict[str, str]
    own_xfails: set[str]
    skip_ids: set[str]
    quick: bool
    #: emulated backends meet every case (else casegen.EMULATED_SAMPLE per clause)
    every_case: bool
    base_seed: int
    devices: list[str] | None
    timeout: float
    clauses: set[str]
    #: the signal that stopped the run (SIGINT or SIGTERM), None while none came
    stopped_by: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    used_xfails: set[str] = field(default_factory=set)
    trial_by_node: dict[str, Trial] = field(default_factory=dict)
    reports: dict[str, dict[str, pytest.TestReport]] = field(default_factory=lambda: defaultdict(dict))
    started: dict[str, float] = field(default_factory=dict)


_KEY = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State | None:
    return config.stash.get(_KEY, None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(id): the SPEC.md clause a conformance test checks")
    names = config.getoption("--backend")
    clauses = set(config.getoption("--clause"))
    unknown = sorted(c for c in clauses if c not in CLAUSES and c not in {k.split("-")[0] for k in CLAUSES})
    if unknown:
        raise pytest.UsageError(f"unknown clause {', '.join(unknown)} (clauses: {', '.join(CLAUSES)})")
    entries = discover([n for n in names if ":" in n], factories=set(config.getoption("--factory")) or None)
    try:
        chosen = select(entries, [n for n in names])
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    results = config.getoption("--results")
    path = Path(results) if results else None
    own_xfails = read_xfails(config.getoption("--xfails-file"))
    builtin = [] if config.getoption("--no-builtin-xfails") else [str(p) for p in BUILTIN_XFAILS]
    state = _State(
        entries=chosen,
        writer=ResultsWriter(path),
        run_id=config.getoption("--run-id") or uuid.uuid4().hex[:12],
        xfails=read_xfails(builtin) | own_xfails,
        own_xfails=set(own_xfails),
        skip_ids=done_ids(path) if (path and config.getoption("--resume")) else set(),
        quick=config.getoption("--quick"),
        every_case=config.getoption("--every-case"),
        base_seed=config.getoption("--seed"),
        devices=config.getoption("--device") or None,
        timeout=config.getoption("--case-timeout"),
        clauses=clauses,
    )
    config.stash[_KEY] = state
    _stop_on_signals(state)
    state.writer.write(_finite({
        "kind": "resume" if state.skip_ids else "run",
        "run_id": state.run_id,
        "started": config.getoption("--run-started") or now(),
        "pid": os.getpid(),
        "provenance": collect(),
        "argv": list(config.invocation_params.args),
        "quick": state.quick,
        "every_case": state.every_case,
        "backends": [
            {"name": e.name, "origin": e.origin, "available": e.available, "reason": e.unavailable,
             "capabilities": e.backend.capabilities.describe() if e.backend is not None else None}
            for e in chosen
        ],
    }))


def _stop_on_signals(state: _State) -> None:
    """SIGINT and SIGTERM interrupt the run and are remembered, so an interrupt is told from a backend that
    raises ``KeyboardInterrupt`` itself."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        state.stopped_by = signal.Signals(signum).name
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


class BackendRaisedInterrupt(Exception):
    """The backend raised ``KeyboardInterrupt`` with no SIGINT or SIGTERM: its case fails, the run goes on."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _backend_interrupt_fails(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _backend_interrupt_fails(item))


def _backend_interrupt_fails(item: pytest.Item) -> Generator[None, object, object]:
    """Around a test's setup or call: turns a ``KeyboardInterrupt`` that no signal caused into a failure."""
    state = _state(item.config)
    try:
        return (yield)
    except KeyboardInterrupt:
        if state is None or state.stopped_by is not None:
            raise
        raise BackendRaisedInterrupt("the backend raised KeyboardInterrupt (no SIGINT or SIGTERM came)") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    spec = getattr(metafunc.function, "__attnspec_cases__", None)
    state = _state(metafunc.config)
    if spec is None or state is None:
        return
    op, make, premise = spec
    cid = clause_of(metafunc.function) or "?"
    params, seen = [], set()
    for entry in state.entries:
        if entry.backend is None:
            continue
        for device in casegen.devices_for(entry.backend, state.devices):
            made = make(entry.backend, device, state.quick)
            reached, reachable = casegen.reach(entry.backend, op, made, premise)
            if entry.backend.capabilities.emulated and not state.every_case:
                reached = casegen.spread(reached, casegen.EMULATED_SAMPLE)
            for case in reached:
                pid = f"{entry.name}-{device}-{dtype_name(case.dtype)}-{case.label}"
                if pid in seen:
                    continue
                seen.add(pid)
                tid = f"{cid}[{pid}]"
                params.append(pytest.param(
                    Trial(entry.backend, op, case, cid, tid, casegen.seed_for(tid, state.base_seed),
                          reachable=reachable), id=pid))
    if not params:
        params = [pytest.param(None, id="no-backend", marks=pytest.mark.skip(reason="no backend selected"))]
    metafunc.parametrize("trial", params, indirect=True)


@pytest.fixture
def trial(request: pytest.FixtureRequest) -> Trial:
    """The backend-on-a-case under test; skips with the backend's reasons when unsupported."""
    t: Trial | None = request.param
    if t is None:
        pytest.skip("no backend selected")
    op = getattr(t.backend, t.op, None)
    if not callable(op):
        raise NotImplementedOperation(f"{t.op} is not implemented")
    reasons = t.backend.not_supported_reasons(t.op, t.case)
    if reasons:
        empty = "" if t.reachable else f"no case of {t.clause} fits the declared limits; this one: "
        raise Unsupported(empty + "; ".join(reasons))
    return t


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    if state is None:
        return
    kept, dropped = [], []
    for item in items:
        t = _trial_of(item)
        if t is None:
            kept.append(item)
            continue
        if t.id in state.skip_ids or (state.clauses and not state.clauses & {t.clause, t.clause.split("-")[0]}):
            dropped.append(item)
            continue
        item.extra_keyword_matches.update({t.clause, t.id})
        state.trial_by_node[item.nodeid] = t
        for pattern, reason in state.xfails.items():
            if fnmatch.fnmatchcase(t.id, pattern.replace("[", "[[]")):  # ids hold brackets; only * ? are wild
                item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
                state.used_xfails.add(pattern)
                break
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    for pattern in state.own_xfails - state.used_xfails:  # built-in entries name devices not always here
        warnings.warn(f"xfails entry {pattern!r} matches no test of this run", stacklevel=1)


def _trial_of(item: pytest.Item) -> Trial | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("trial") if callspec is not None else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ANN201
    state = _state(item.config)
    t = state.trial_by_node.get(item.nodeid) if state else None
    if state is None or t is None:
        yield
        return
    repro = repro_command(item, t)
    state.writer.write(_finite(_base_record(t) | {"kind": "start", "repro": repro}))
    state.started[item.nodeid] = time.perf_counter()
    watchdog = threading.Timer(state.timeout, _on_timeout, args=(state, t, repro))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def _on_timeout(state: _State, t: Trial, repro: str) -> None:
    """A case ran past --case-timeout: record it and end the process (a hung kernel cannot be interrupted).
    A hang that holds the GIL stops this thread too; the supervisor's own deadline covers that."""
    state.writer.write(_finite(_base_record(t) | {"status": Status.TIMEOUT.value, "duration": state.timeout,
                                                   "reason": f"no result after {state.timeout:g} s", "repro": repro}))
    state.writer.close()
    os._exit(TIMEOUT_EXIT)


def repro_command(item: pytest.Item, t: Trial) -> str:
    """One shell line, run from the repository root, that runs this case alone with the options that made it."""
    config = item.config
    entry = next((e for e in _state(config).entries if e.backend is t.backend), None)
    selector = entry.origin.removeprefix("--backend ") if entry and entry.origin.startswith("--backend ") \
        else t.backend.name
    args = ["python", "-m", "pytest", item.nodeid, "--backend", selector, "--device", t.device,
            f"--seed={config.getoption('--seed')}", f"--case-timeout={config.getoption('--case-timeout'):g}"]
    args += ["--quick"] if config.getoption("--quick") else []
    args += ["--no-builtin-xfails"] if config.getoption("--no-builtin-xfails") else []
    return shlex.join(args + ["-p", "no:cacheprovider"])


def _base_record(t: Trial) -> dict[str, Any]:
    return {"kind": "case", "id": t.id, "clause": t.clause, "area": t.clause.split("-")[0],
            "backend": t.backend.name, "device": t.device, "dtype": dtype_name(t.dtype),
            "op": t.op, "shape": t.case.label, "seed": t.seed}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    state = _state(item.config)
    if state is None or item.nodeid not in state.trial_by_node:
        return
    report = outcome.get_result()
    declared = call.excinfo.value if call.excinfo is not None else None
    if isinstance(declared, Unsupported | NotImplementedOperation):  # the status by type, never by text
        report.user_properties.append(("attnspec_status", declared.status.value))
    state.reports[item.nodeid][call.when] = report
    if call.when == "teardown":
        _finish(state, item)


def _status(reports: dict[str, pytest.TestReport]) -> tuple[Status, str | None]:
    """The status of a case from its setup and call reports, and its reason."""
    setup, call = reports.get("setup"), reports.get("call")
    for rep in (setup, call):
        if rep is None:
            continue
        xfail = getattr(rep, "wasxfail", None)
        if rep.skipped and xfail is not None:
            return Status.XFAIL, xfail or None
        if rep.passed and xfail is not None and rep.when == "call":
            return Status.XPASS, xfail or None
        if rep.skipped:
            message = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            message = message.removeprefix("Skipped: ")
            declared = dict(rep.user_properties).get("attnspec_status")
            return Status.parse(declared) or Status.SKIPPED, message
        if rep.failed:
            status = Status.ERROR if rep.when == "setup" else Status.FAILED
            text = rep.longreprtext.strip().splitlines()
            errors = [ln for ln in text if ln.startswith("E ")]
            return status, "\n".join(e[1:].strip() for e in errors[:8])[:2000] or (text[-1] if text else None)
    return Status.PASSED, None


def _finish(state: _State, item: pytest.Item) -> None:
    t = state.trial_by_node[item.nodeid]
    status, reason = _status(state.reports.pop(item.nodeid))
    record = _base_record(t) | t.summary() | {
        "status": status.value,
        "reason": reason,
        "test": item.originalname if isinstance(item, pytest.Function) else item.name,
        "duration": round(time.perf_counter() - state.started.pop(item.nodeid, time.perf_counter()), 4),
        "metrics": t.metrics,
    }
    if status.bad:
        record["repro"] = repro_command(item, t)
    record = _finite(record)
    state.records.append(record)
    state.writer.write(record)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _state(config)
    if state is None or not state.records:
        return
    tr = terminalreporter
    tr.section("attnspec verdicts (clause x backend)")
    for line in verdict_table(state.records):
        tr.write_line(line)
    unavailable = [e for e in state.entries if not e.available]
    for e in unavailable:
        tr.write_line(f"unavailable backend {e.name}: {e.unavailable}")
    if state.writer.path:
        tr.write_line(f"results: {state.writer.path}")


def verdict_table(records: list[dict[str, Any]]) -> list[str]:
    """A plain-text clause x backend table: ``pass/total`` and the other statuses in short."""
    backends = sorted({r["backend"] + "@" + r["device"] for r in records})
    per: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in records:
        per[(r["clause"], r["backend"] + "@" + r["device"])][r["status"]] += 1
    clauses = [c for c in CLAUSES if any((c, b) in per for b in backends)]
    width = max(14, *(len(b) for b in backends))
    lines = ["clause    " + "".join(b.ljust(width + 2) for b in backends)]
    for c in clauses:
        cells = []
        for b in backends:
            n = per.get((c, b))
            cells.append((_cell(n) if n else "-").ljust(width + 2))
        lines.append(c.ljust(10) + "".join(cells))
    return lines


def _cell(counts: Counter[str]) -> str:
    """``FAIL 3/40`` when a case is bad, ``ok 37/40`` when some passed and none is bad, ``none 0/36`` when
    nothing passed; then the unsupported/xfail counts."""
    total = sum(counts.values())
    bad = sum(n for s, n in counts.items() if Status(s).bad)
    head = f"FAIL {bad}/{total}" if bad else f"{'ok' if counts['passed'] else 'none'} {counts['passed']}/{total}"
    extra = [f"{counts[k]} {short}" for k, short in
             (("unsupported", "uns"), ("not_implemented", "n/i"), ("xfail", "xf"), ("xpass", "xp")) if counts[k]]
    return head + (" (" + ", ".join(extra) + ")" if extra else "")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    if state is None:
        return
    counts = Counter(r["status"] for r in state.records)
    completed = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)
    ended = "interrupted" if state.stopped_by else ("completed" if completed else "aborted")
    state.writer.write({"kind": "end", "run_id": state.run_id, "finished": now(), "ended": ended,
                        "stopped_by": state.stopped_by, "exitstatus": int(exitstatus), "counts": dict(counts)})
    state.writer.close()
