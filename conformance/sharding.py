"""``--shard K/N``: a fixed split of the conformance matrix into N parts, for a CI matrix of machines.

A test id belongs to shard ``crc32(id) mod N + 1``: the split depends on the id alone, so every machine
computes the same one whatever else it runs (backends, ``--jobs``, ``--gpus``, the order of collection), the
N shards hold every id exactly once, and a case keeps its shard from run to run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def holds(self, test_id: str) -> bool:
        """Whether ``test_id`` belongs to this shard."""
        return zlib.crc32(test_id.encode()) % self.count + 1 == self.index


def parse_shard(text: str) -> Shard:
    """``"2/4"`` -> ``Shard(2, 4)``; ValueError naming the problem otherwise."""
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise ValueError(f"--shard must read K/N (e.g. 2/4), got {text!r}")
    shard = Shard(int(index), int(count))
    if not 1 <= shard.index <= shard.count:
        raise ValueError(f"--shard {text}: K must be between 1 and N")
    return shard
