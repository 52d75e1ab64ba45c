"""Clauses that are properties (ATT-5's cut, KD-4's shift, SMX-3's split points), searched with hypothesis.

Within one case the search is deterministic: examples are drawn from the case's seed, no example database
is read or written, and few examples are drawn, since each one calls the backend (the Triton interpreter
among them). A failing example is shrunk to a minimal one, which the failure message and
``trial.metrics["falsifying <name>"]`` name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from conformance.trial import Trial

T = TypeVar("T")


def falsify(trial: Trial, name: str, examples: st.SearchStrategy[T], holds: Callable[[T], None],
            count: int) -> None:
    """Check ``holds(example)`` (which raises AssertionError when the property fails) on ``count`` examples
    drawn from ``examples`` with the trial's seed; fail with the shrunk example named."""

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @seed(trial.seed)
    @given(examples)
    def search(example: T) -> None:
        try:
            holds(example)
        except AssertionError as exc:
            trial.metrics[f"falsifying {name}"] = repr(example)  # the last failure is the shrunk one
            raise AssertionError(f"{name} {example!r}: {exc}") from None

    try:
        search()
    except Flaky as exc:  # a failure that does not repeat on the same inputs (a nondeterministic backend)
        raise AssertionError(f"{name}: a failure that did not repeat on the same example ({exc})") from None
