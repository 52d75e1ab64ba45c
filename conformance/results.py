"""Statuses of conformance cases, in one place: their severity order and which of them make a run bad.

Every writer and reader of results (the plugin, the supervisor, the CLI, the report) takes statuses from
here; none restates the order or the set of bad statuses.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """The verdict of one case. Members are listed most severe first; the value is the JSON spelling."""

    CRASHED = "crashed"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    ERROR = "error"
    FAILED = "failed"
    XPASS = "xpass"
    XFAIL = "xfail"
    PASSED = "passed"
    SKIPPED = "skipped"
    UNSUPPORTED = "unsupported"
    NOT_IMPLEMENTED = "not_implemented"

    @property
    def bad(self) -> bool:
        """A case that makes the run fail: a wrong answer, an error, a dead or hung process, or a case that
        never finished."""
        return self in BAD

    @property
    def stopped(self) -> bool:
        """A case that never finished in its process: it crashed, timed out or was interrupted."""
        return self in STOPPED

    @property
    def severity(self) -> int:
        """0 for the most severe status; cells and lists show the lowest severity number first."""
        return ORDER.index(self)

    @classmethod
    def parse(cls, value: object) -> Status | None:
        """The status spelled ``value`` in a results file, or None for anything else."""
        try:
            return cls(value)
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.value


ORDER: tuple[Status, ...] = tuple(Status)
STOPPED: frozenset[Status] = frozenset({Status.CRASHED, Status.TIMEOUT, Status.INTERRUPTED})
BAD: frozenset[Status] = STOPPED | {Status.ERROR, Status.FAILED}
