"""Where and with what a result was measured: machine, GPU, driver, library versions, commit, time."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

from conformance.records import Provenance

REPO_ROOT = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def now() -> str:
    """The current time, UTC, ISO-8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def collect() -> Provenance:
    """Provenance of a run (docs/results-format.md); the commit from ``ATTNSPEC_COMMIT`` where the
    checkout has no git history (a copied working tree)."""
    cuda = torch.cuda.is_available()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return Provenance(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=_cpu_name(),
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        driver=_driver() if cuda else None,
        cuda=torch.version.cuda if cuda else None,
        torch=torch.__version__,
        triton=_version("triton"),
        cupy=_version("cupy-cuda13x") or _version("cupy-cuda12x") or _version("cupy"),
        numpy=_version("numpy"),
        commit=_git("rev-parse", "HEAD") or os.environ.get("ATTNSPEC_COMMIT"),
        dirty=bool(status) if status is not None else None,
        timestamp=now(),
    )
