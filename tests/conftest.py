"""Shared fixtures of the suite's own tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_conformance(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``pytest conformance ...`` in a subprocess; return its exit code, its result records and output."""
    results = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}.jsonl"
    cmd = [sys.executable, "-m", "pytest", *args, "--results", str(results), "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    return done.returncode, records, done.stdout + done.stderr


@pytest.fixture
def conformance_run(tmp_path: Path):  # noqa: ANN201
    """``conformance_run(*pytest_args) -> (exit code, records, output)``."""
    return lambda *args, **kw: run_conformance(tmp_path, *args, **kw)
