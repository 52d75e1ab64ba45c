"""How a sequence is sharded over the ranks of a context-parallel group (SPEC DIST).

A rank holds one or two *chunks* of the sequence: contiguous ranges of global positions, stored one after
the other along the sequence dimension of its local tensor.

- ``contiguous``: rank ``r`` holds one range; the ranges follow in rank order and their lengths are free
  (uneven shards, a rank may even hold none). The lengths are what the ranks exchange.
- ``zigzag``: the sequence of length ``S`` is cut into ``2W`` chunks by ``torch.tensor_split`` (the first
  ``S mod 2W`` chunks one longer); rank ``r`` holds chunks ``r`` and ``2W - 1 - r``. With causal masking each
  rank then sees about the same number of visible (query, key) pairs, which contiguous shards do not give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

SequenceLayout = Literal["contiguous", "zigzag"]
SEQUENCE_LAYOUTS: tuple[SequenceLayout, ...] = ("contiguous", "zigzag")


@dataclass(frozen=True)
class Chunk:
    """Global positions ``[start, stop)`` stored at local positions ``[local, local + stop - start)``."""

    start: int
    stop: int
    local: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def even_lengths(S: int, world: int) -> list[int]:
    """The lengths of ``torch.tensor_split(range(S), world)``: differing by at most one, longer ones first."""
    base, extra = divmod(S, world)
    return [base + (1 if i < extra else 0) for i in range(world)]


def chunks(layout: SequenceLayout, lengths: list[int], rank: int) -> list[Chunk]:
    """The chunks rank ``rank`` holds, given every rank's local length (``lengths[r]``)."""
    world = len(lengths)
    if layout == "contiguous":
        start = sum(lengths[:rank])
        return [Chunk(start, start + lengths[rank], 0)]
    pieces = even_lengths(sum(lengths), 2 * world)
    offsets = [sum(pieces[:i]) for i in range(2 * world + 1)]
    first, second = rank, 2 * world - 1 - rank
    return [Chunk(offsets[first], offsets[first + 1], 0),
            Chunk(offsets[second], offsets[second + 1], pieces[first])]


def zigzag_lengths(S: int, world: int) -> list[int]:
    """Every rank's local length under ``zigzag`` for a sequence of length ``S``."""
    pieces = even_lengths(S, 2 * world)
    return [pieces[r] + pieces[2 * world - 1 - r] for r in range(world)]


def shard(x: torch.Tensor, layout: SequenceLayout, lengths: list[int], rank: int, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s local tensor of the global ``x`` (the sequence along ``dim``), contiguous."""
    parts = [x.narrow(dim, c.start, c.length) for c in chunks(layout, lengths, rank)]
    return torch.cat(parts, dim=dim).contiguous()


def positions(layout: SequenceLayout, lengths: list[int], rank: int) -> torch.Tensor:
    """The global position of each local row of rank ``rank``."""
    found = [torch.arange(c.start, c.stop) for c in chunks(layout, lengths, rank)]
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)
