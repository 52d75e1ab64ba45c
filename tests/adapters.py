"""What the adapter tests share: ``attnspec backends`` through the real CLI, read into name -> (status, text),
and the reasons a CUDA-only adapter gives."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from collections.abc import Callable

import pytest
import torch

from implementations.base import BackendUnavailable
from tests.test_runner import attnspec

ROW = re.compile(r"^│\s*(?P<name>[\w.:-]+)\s*│\s*(?P<status>available|unavailable)\s*│[^│]*│\s*(?P<text>.*?)\s*│$")


@functools.cache
def listing() -> dict[str, tuple[str, str]]:
    """``attnspec backends`` (one call per test process, 400 columns so rows do not wrap): name -> (status,
    description or reason)."""
    done = attnspec("backends", env={"COLUMNS": "400"})
    assert done.returncode == 0, done.stderr
    return parse_listing(done.stdout)


def parse_listing(stdout: str) -> dict[str, tuple[str, str]]:
    """The table ``attnspec backends`` prints, read into name (or a failed factory's spec) -> (status,
    description or reason)."""
    rows = (ROW.match(line) for line in stdout.splitlines())
    return {m["name"]: (m["status"], m["text"]) for m in rows if m}


def assert_gpu_only_reasons(monkeypatch: pytest.MonkeyPatch, factory: Callable[[], object], distribution: str,
                            version: str) -> None:
    """A CUDA-only adapter's factory says why it cannot run: package missing, no CUDA device, or an import that
    fails against this torch (simulated by a module that raises on import)."""
    real_version = importlib.metadata.version

    def missing(name: str) -> str:
        if name == distribution:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(BackendUnavailable, match=f"{distribution} is not installed"):
        factory()
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: version if name == distribution else real_version(name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        factory()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib, "import_module", lambda name: (_ for _ in ()).throw(OSError("undefined symbol")))
    with pytest.raises(BackendUnavailable, match="does not import against torch .*OSError: undefined symbol"):
        factory()


def assert_listed_unavailable(name: str) -> None:
    """``attnspec backends`` on this CPU machine lists ``name`` unavailable: not installed, or no CUDA device."""
    status, reason = listing()[name]
    assert status == "unavailable"
    assert "is not installed" in reason or "no CUDA device" in reason, reason
