"""An exclusive lock on a results file for the whole run of ``attnspec conformance``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ResultsLock:
    """An exclusive lock on ``RESULTS.lock`` for the whole run: a second run on the same results file is
    refused instead of deleting the first one's results. The lock file holds the pid of its run and is
    removed when the run ends."""

    def __init__(self, results: Path) -> None:
        self.path = results.with_name(results.name + ".lock")
        self._fh: Any = None

    def acquire(self) -> bool:
        """Lock the file, or False when another run holds it. A file its holder removed between our open and
        our lock is not the lock any more: then the one now at the path is locked."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            if self._is_at_path(fh):
                break
            fh.close()
        fh.truncate(0)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return True

    def _is_at_path(self, fh: Any) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order, so no other run locks a removed file)."""
        if self._fh is not None:
            self.path.unlink(missing_ok=True)
            self._fh.close()
            self._fh = None
