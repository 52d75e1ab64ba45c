"""Backend discovery in a child process: a factory that exits or kills the interpreter (``sys.exit``,
``os._exit``, a segfault in a native import) costs only its own entries, which are listed unavailable with
the reason; ``attnspec backends`` and ``attnspec conformance`` go on with the others.

The child (``python -m conformance.probe SPEC ...``) calls the factories one by one and prints one JSON line
before each (``{"trying": spec}``) and one per backend it made. When the child dies, the factory it was trying
is the culprit: the parent records it and starts a child for the factories after it. A factory's own output
goes to stderr of the child, so its prints cannot pass for these lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from conformance import reaper
from implementations.ops import OPS
from implementations.registry import FactorySpec, factory_specs, instantiate, refuse_duplicate_names


@dataclass
class Listing:
    """What a child process found out about one backend: enough to list it and to run it."""

    name: str
    origin: str
    factory: str
    reason: str | None = None
    description: str = ""
    operations: tuple[str, ...] = ()
    capabilities: dict[str, Any] | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    def refuse(self, reason: str) -> None:
        self.reason = reason

    @property
    def spec_requested(self) -> bool:
        """Named on the command line or in ``ATTNSPEC_BACKENDS`` (rather than built in or an entry point)."""
        return self.origin.startswith("--backend ")

    @property
    def selector(self) -> str:
        """What ``--backend`` takes to select this backend in a child: its spec when it came from one."""
        return self.origin.removeprefix("--backend ") if self.spec_requested else self.name


def _listings_of(factory: FactorySpec) -> list[Listing]:
    listings = []
    for entry in instantiate(factory):
        b = entry.backend
        listings.append(Listing(
            name=entry.name, origin=entry.origin, factory=entry.factory, reason=entry.unavailable,
            description=str(getattr(b, "description", "") or "") if b is not None else "",
            operations=tuple(op for op in OPS if callable(getattr(b, op, None))) if b is not None else (),
            capabilities=b.capabilities.describe() if b is not None else None))
    return listings


def factory_timeout_s() -> float:
    """Seconds one probe child may take over its factories (``ATTNSPEC_FACTORY_TIMEOUT``, default 600): past it,
    the factory in flight is listed unavailable and the others are probed in a new child."""
    return float(os.environ.get("ATTNSPEC_FACTORY_TIMEOUT", "600"))


class DiscoveryError(RuntimeError):
    """The probe child failed before calling any factory (the registry itself could not be loaded)."""


def _probe(start: int, extra_specs: list[str], timeout: float) -> tuple[str, str, int, bool]:
    """Run one probe child from factory ``start`` on: its stdout, stderr, exit status, and whether it was killed
    for running past ``timeout``."""
    from conformance.supervisor import DIE_WITH_PARENT

    proc = subprocess.Popen([sys.executable, "-m", "conformance.probe", "--reap-group", "--skip", str(start),
                             *extra_specs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=DIE_WITH_PARENT)
    try:
        out, err = proc.communicate(timeout=timeout)
        late = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        late = True
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the factories started and left behind
    except ProcessLookupError:
        pass
    return out, err, proc.returncode, late


def discover_isolated(extra_specs: list[str]) -> list[Listing]:
    """Every backend the registry can see (:func:`implementations.registry.factory_specs`), made in child processes.
    Raises :class:`DiscoveryError` when a child fails before calling any factory."""
    from conformance.supervisor import describe_exit

    factories = factory_specs(extra_specs)
    listings: list[Listing] = []
    start, timeout = 0, factory_timeout_s()
    while start < len(factories):
        out, err, code, late = _probe(start, extra_specs, timeout)
        trying: int | None = None  # the factory whose call had begun and not ended when the child stopped
        heard = False
        for line in out.splitlines():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the crash
            if not isinstance(message, dict) or set(message) != {"probe"}:
                continue
            event, heard = message["probe"], True
            if event["event"] == "trying":
                trying = event["factory"]
            elif event["event"] == "done":
                trying = None
            else:
                listings.append(Listing(**{**event["listing"], "operations": tuple(event["listing"]["operations"])}))
        if not heard and code != 0:
            raise DiscoveryError(f"backend discovery failed: {err.strip()[-2000:]}")
        if trying is None:
            break
        culprit = factories[trying]
        tail = (err.strip().splitlines() or [""])[-1]
        reason = (f"the factory did not return within {timeout:g} s (ATTNSPEC_FACTORY_TIMEOUT)" if late
                  else f"the factory's process {describe_exit(code)} {tail}".strip())
        listings.append(Listing(culprit.label, culprit.origin, culprit.spec, reason=reason))
        start = trying + 1
    refuse_duplicate_names(listings)
    return listings


def _say(channel: TextIO, event: dict[str, Any]) -> None:
    channel.write(json.dumps({"probe": event}) + "\n")
    channel.flush()


def main(argv: list[str] | None = None) -> int:
    """Child side: call the factories from ``--skip`` on, one JSON line before each and one per backend."""
    parser = argparse.ArgumentParser(prog="python -m conformance.probe")
    parser.add_argument("--skip", type=int, default=0, help="factories already probed")
    parser.add_argument("--reap-group", action="store_true",
                        help="this process leads a process group of its own: kill the group when it dies")
    parser.add_argument("specs", nargs="*")
    args = parser.parse_args(argv)
    if args.reap_group:
        reaper.start()
    channel = os.fdopen(os.dup(1), "w")  # the parent reads this; what factories print goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for i, factory in enumerate(factory_specs(args.specs)):
        if i < args.skip:
            continue
        _say(channel, {"event": "trying", "factory": i})
        for listing in _listings_of(factory):
            _say(channel, {"event": "listing", "listing": asdict(listing)})
        _say(channel, {"event": "done", "factory": i})
    return 0


if __name__ == "__main__":
    sys.exit(main())
