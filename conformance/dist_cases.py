"""The cases of the DIST chapter: a global attention problem, a world size, a sequence layout, a split.

A :class:`DistCase` is an :class:`~implementations.base.AttentionCase` (the global shapes, dtype, device,
causal variant: so a backend's declared limits apply to it as to any attention case) plus how it is spread:
``world`` ranks, the sequence layout (``contiguous`` or ``zigzag``) and, for contiguous shards, whether the
split is skewed (rank r holds about ``(r + 1)`` parts of the sequence) rather than even.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conformance import cases as casegen
from implementations.base import AttentionCase
from implementations.sequence_layout import SequenceLayout, even_lengths, zigzag_lengths


@dataclass(frozen=True)
class DistCase(AttentionCase):
    """A global attention problem spread over ``world`` ranks in ``seq_layout``."""

    world: int = 2
    seq_layout: SequenceLayout = "contiguous"
    #: contiguous shards of lengths proportional to 1, 2, ..., world instead of even ones
    skewed: bool = False

    @property
    def label(self) -> str:
        """``B1H4k2-61x61-D32-causal_tl-W4-zigzag`` (``-skewed`` for a skewed contiguous split)."""
        return f"{super().label}-W{self.world}-{self.seq_layout}" + ("-skewed" if self.skewed else "")

    def q_lengths(self) -> list[int]:
        return split(self.Sq, self.world, self.seq_layout, self.skewed)

    def k_lengths(self) -> list[int]:
        return split(self.Sk, self.world, self.seq_layout, self.skewed)


def split(S: int, world: int, layout: SequenceLayout, skewed: bool) -> list[int]:
    """Every rank's local length of a sequence of ``S`` (each at least 1)."""
    if layout == "zigzag":
        return zigzag_lengths(S, world)
    if not skewed:
        return even_lengths(S, world)
    parts = world * (world + 1) // 2
    lengths = [max(1, S * (r + 1) // parts) for r in range(world)]
    lengths[-1] += S - sum(lengths)
    return lengths


def dist_inputs(case: DistCase, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global Q, K, V and a dout drawn from ``seed`` (the same on every rank and in the caller)."""
    q, k, v = casegen.attention_inputs(case, seed)
    dout = casegen.randn(tuple(q.shape), q.dtype, case.device, casegen.generator(seed + 7))
    return q, k, v, dout


def dist_cases(device: str, dtype: torch.dtype, shapes: tuple[tuple[int, int, int, int, int], ...], *,
               worlds: tuple[int, ...] = (2,), layouts: tuple[SequenceLayout, ...] = ("contiguous", "zigzag"),
               causal: tuple[str | None, ...] = (None, "top_left"), skewed: bool = False) -> list[DistCase]:
    """Every combination of ``shapes`` ``(Hq, Hk, Sq, Sk, D)`` (B = 1), world sizes, layouts and causal variants
    whose every rank holds at least one query and one key."""
    found = []
    for Hq, Hk, Sq, Sk, D in shapes:
        for world in worlds:
            for layout in layouts:
                for variant in causal:
                    case = DistCase(1, Hq, Hk, Sq, Sk, D, dtype, device, causal=variant,  # type: ignore[arg-type]
                                    world=world, seq_layout=layout, skewed=skewed and layout == "contiguous")
                    if min(case.q_lengths() + case.k_lengths()) >= 1:
                        found.append(case)
    return found
