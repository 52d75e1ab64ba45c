"""Interrupting a command line as a step's limit does (``timeout --signal=INT``), for the tests of the tools
that run a child under a limit (profile_kernels' ncu, sanitize_cupy's compute-sanitizer)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Interrupted:
    """How the command ended after SIGINT, and whether the child it had started outlived it."""

    returncode: int
    stderr: str
    child_alive: bool


def interrupt_once_started(command: list[str], env: dict[str, str], cwd: Path, pid_file: Path) -> Interrupted:
    """Start ``command`` with SIGINT ignored (as a script's background job starts: the command must take the
    interrupt all the same), wait until its child has written its pid to ``pid_file``, send SIGINT and give
    it 120 s to end. Whatever is left is killed afterwards, so a failing run leaves nothing sleeping."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.exists(), "the command did not start its child within 120 s"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        try:
            os.kill(int(pid_file.read_text()), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        return Interrupted(proc.returncode, stderr, alive)
    finally:
        proc.kill()
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
