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
import os
import shlex
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from conformance import cases as casegen
from conformance import reaper
from conformance.codec import done_ids
from conformance.deviations import BUILTIN_XFAILS, read_xfails
from conformance.interrupts import SignalWatch, watch_signals
from conformance.provenance import collect, now
from conformance.records import BackendListing, CaseRecord, CaseStart, Ended, EndRecord, RunRecord
from conformance.results import Status
from conformance.results_file import ResultsWriter
from conformance.sharding import Shard, parse_shard
from conformance.spec import CLAUSES, clause_of
from conformance.trial import NotImplementedOperation, Trial, Unsupported
from conformance.verdicts import verdict_table
from implementations.base import dtype_name
from implementations.registry import RegistryEntry, discover, select

TIMEOUT_EXIT = 3

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
    group.addoption("--shard", default=None, metavar="K/N",
                    help="run only shard K of N of the test ids (conformance.sharding)")
    group.addoption("--reap-group", action="store_true",
                    help="this process leads a process group of its own: kill the group when it dies "
                         "(conformance/reaper.py)")
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
    #: the part of the matrix this run holds (None: all of it)
    shard: Shard | None = None
    #: the signal that stopped the run, if one did
    signals: SignalWatch = field(default_factory=SignalWatch)
    records: list[CaseRecord] = field(default_factory=list)
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
    try:
        shard = parse_shard(config.getoption("--shard")) if config.getoption("--shard") else None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
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
        shard=shard,
    )
    config.stash[_KEY] = state
    if config.getoption("--reap-group"):
        reaper.start()
    state.signals = watch_signals(config)
    state.writer.write(RunRecord(
        run_id=state.run_id, started=config.getoption("--run-started") or now(), pid=os.getpid(),
        provenance=collect(), argv=list(config.invocation_params.args), quick=state.quick,
        shard=config.getoption("--shard"), every_case=state.every_case, backends=[listing(e) for e in chosen],
        resumed=bool(state.skip_ids)))


def listing(entry: RegistryEntry) -> BackendListing:
    """How a run record lists a backend: found or not, its description and what it declares."""
    backend = entry.backend
    return BackendListing(
        name=entry.name, origin=entry.origin, available=entry.available, reason=entry.unavailable,
        description=(getattr(backend, "description", "") or None) if backend is not None else None,
        capabilities=backend.capabilities.describe() if backend is not None else None)


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
        if (t.id in state.skip_ids or (state.clauses and not state.clauses & {t.clause, t.clause.split("-")[0]})
                or (state.shard is not None and not state.shard.holds(t.id))):
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
    state.writer.write(_start(t, repro))
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
    state.writer.write(CaseRecord.ended(_start(t, repro), Status.TIMEOUT, f"no result after {state.timeout:g} s",
                                        state.timeout))
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


def _start(t: Trial, repro: str) -> CaseStart:
    return CaseStart(id=t.id, clause=t.clause, backend=t.backend.name, device=t.device, dtype=dtype_name(t.dtype),
                     op=t.op, shape=t.case.label, seed=t.seed, repro=repro)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    state = _state(item.config)
    if state is None or item.nodeid not in state.trial_by_node:
        return
    report = outcome.get_result()
    declared = call.excinfo.value if call.excinfo is not None else None
    if isinstance(declared, Unsupported | NotImplementedOperation):  # the status by type, never by text
        report.user_properties.append(("attnspec_status", declared.status))
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
            return declared if isinstance(declared, Status) else Status.SKIPPED, message
        if rep.failed:
            status = Status.ERROR if rep.when == "setup" else Status.FAILED
            text = rep.longreprtext.strip().splitlines()
            errors = [ln for ln in text if ln.startswith("E ")]
            return status, "\n".join(e[1:].strip() for e in errors[:8])[:2000] or (text[-1] if text else None)
    return Status.PASSED, None


def _finish(state: _State, item: pytest.Item) -> None:
    t = state.trial_by_node[item.nodeid]
    status, reason = _status(state.reports.pop(item.nodeid))
    start = _start(t, repro_command(item, t) if status.bad else None)
    record = replace(
        CaseRecord.ended(start, status, reason, round(time.perf_counter() - state.started.pop(item.nodeid,
                                                                                             time.perf_counter()), 4)),
        test=item.originalname if isinstance(item, pytest.Function) else item.name, metrics=t.metrics, **t.summary())
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    if state is None:
        return
    counts = Counter(r.status for r in state.records)
    completed = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)
    stopped_by = state.signals.stopped_by
    ended = Ended.INTERRUPTED if stopped_by else (Ended.COMPLETED if completed else Ended.ABORTED)
    state.writer.write(EndRecord(run_id=state.run_id, finished=now(), ended=ended, stopped_by=stopped_by,
                                 exitstatus=int(exitstatus), counts=dict(counts)))
    state.writer.close()
