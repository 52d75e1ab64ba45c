"""Running a kernel tool's child (ncu, compute-sanitizer) with a time limit, and stopping it with the tool.

The tools run on GPU machines under a step limit (``timeout --signal=INT`` in ``.ci/gpu-evidence.sh``): the
interrupt reaches them as ``KeyboardInterrupt`` (``conformance.interrupts.interruptible``) and takes their
child, with everything it started, along.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """How a limited subprocess ended: its exit status (None when killed at the limit) and output."""

    returncode: int | None
    stdout: str
    stderr: str


def run_limited(command: list[str], seconds: float, env: dict[str, str] | None = None) -> Finished:
    """Run ``command`` (with environment ``env``, default this one's) in a session of its own; past
    ``seconds``, or when this process is interrupted, the whole session (the tool and the Python process it
    runs) is killed."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=max(seconds, 1.0))
        return Finished(proc.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return Finished(None, stdout, stderr + f"\nkilled at the limit of {seconds:.0f} s")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
