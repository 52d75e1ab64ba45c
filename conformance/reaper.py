"""The reaper of a backend's process group: whatever a backend starts dies with the process that ran it.

The supervisor starts each pytest child (and ``conformance.probe`` each discovery child) as the leader of a
process group of its own, and kills that group after the child exits. A process the backend started (a compile
server, a worker pool) is in that group too, but when the supervisor itself is killed with SIGKILL nobody is
left to kill the group: the child dies with its parent (``PR_SET_PDEATHSIG``), its own children would not.

So such a child, told so by its option ``--reap-group``, starts a reaper (:func:`start`): a small process in its
group that the kernel sends SIGTERM when the child dies, however it dies, and that then kills the whole group
with SIGKILL, itself included. A process that leaves the group (``setsid``) is out of its reach. Linux only:
elsewhere no reaper is started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def start() -> subprocess.Popen[bytes] | None:
    """Start the reaper of this process's group, which must be a group the caller's parent made for it alone
    (never a shell's job, where the reaper would kill the rest of a pipeline). Only in a group leader and only
    on Linux; returns the reaper, or None."""
    if not sys.platform.startswith("linux") or os.getpgrp() != os.getpid():
        return None
    return subprocess.Popen([sys.executable, "-m", "conformance.reaper", str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_group(*_: object) -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    """Reaper side: SIGTERM when the parent ``argv[0]`` dies, then SIGKILL to the group."""
    import ctypes

    parent = int(argv[0])
    signal.signal(signal.SIGTERM, _kill_group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt of the group is the parent's to handle
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the death signal was set
        _kill_group()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
