"""Telling a real interrupt from a backend's ``KeyboardInterrupt``.

Only SIGINT or SIGTERM interrupts a run: :func:`watch_signals` remembers which came (the ``end`` record says
so). A backend that raises ``KeyboardInterrupt`` itself, with no signal, fails its case and the run goes on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
from dataclasses import dataclass

import pytest


@dataclass
class SignalWatch:
    """The signal that stopped the run (``"SIGINT"`` or ``"SIGTERM"``), None while none came."""

    stopped_by: str | None = None


_KEY = pytest.StashKey[SignalWatch]()


def watch_signals(config: pytest.Config) -> SignalWatch:
    """Install handlers for SIGINT and SIGTERM that record the signal and interrupt the run (main thread only)."""
    watch = config.stash.setdefault(_KEY, SignalWatch())
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: object) -> None:
            watch.stopped_by = signal.Signals(signum).name
            raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
    return watch


def interruptible() -> None:
    """Make SIGINT raise ``KeyboardInterrupt`` in this process even when it was started with SIGINT ignored
    (Python keeps an inherited ignore, and a script's background job starts so): a step's limit
    (``timeout --signal=INT``) and Ctrl-C then stop a command line, which records what it has. Called from
    another thread (where no handler can be set) it does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
    watch = item.config.stash.get(_KEY, None)
    try:
        return (yield)
    except KeyboardInterrupt:
        if watch is None or watch.stopped_by is not None:
            raise
        raise BackendRaisedInterrupt("the backend raised KeyboardInterrupt (no SIGINT or SIGTERM came)") from None
