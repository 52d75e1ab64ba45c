"""What the adapter tests share: ``attnspec backends`` through the real CLI, read into name -> (status, text)."""

from __future__ import annotations

import functools
import re

from tests.test_runner import attnspec

ROW = re.compile(r"^│\s*(?P<name>[\w.-]+)\s*│\s*(?P<status>available|unavailable)\s*│[^│]*│\s*(?P<text>.*?)\s*│$")


@functools.cache
def listing() -> dict[str, tuple[str, str]]:
    """``attnspec backends`` (one call per test process, 400 columns so rows do not wrap): name -> (status,
    description or reason)."""
    done = attnspec("backends", env={"COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    rows = (ROW.match(line) for line in done.stdout.splitlines())
    return {m["name"]: (m["status"], m["text"]) for m in rows if m}
