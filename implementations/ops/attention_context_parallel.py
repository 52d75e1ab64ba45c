"""``attention_context_parallel(q, k, v, *, group=None, layout="contiguous", causal=None, scale=None)
-> (out, lse)`` (SPEC DIST).

Context-parallel attention: each rank of the process group ``group`` (None: the default group) holds a shard
of the sequence (``implementations.sequence_layout``: ``contiguous`` or ``zigzag``) of Q and of K, V, and
receives the matching shard of the single-device result. ``q [B, Hq, Sq_r, D]``, ``k, v [B, Hk, Sk_r, D]``
with ``Sq_r``, ``Sk_r`` the rank's local lengths (each at least 1; the global ``Sq``, ``Sk`` are their sums
over the ranks); ``causal`` and ``scale`` as in ``attention``, applied to global positions (the
bottom-right offset is ``Sk - Sq`` of the global lengths). Returns ``out`` like q and ``lse [B, Hq, Sq_r]``
(float32; float64 for float64 inputs), the rows of the single-device ``attention`` at the rank's positions.
Every rank of the group calls it with the same ``layout``, ``causal`` and ``scale``.

Oracle: the single-device ``attention`` oracle of the global problem, compared with the ranks' shards put
back at their global positions (``implementations.sequence_layout.positions``).

Cost: the single-device ``attention`` FLOPs of the global problem, spread over the ranks; each rank sends
and receives ``(W - 1)`` K, V shards in a ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from implementations import validate
from implementations.base import Capabilities, InvalidInputError
from implementations.ops import attention
from implementations.ops.spec import OpSpec
from implementations.sequence_layout import SEQUENCE_LAYOUTS, SequenceLayout


@dataclass(frozen=True, kw_only=True)
class ContextParallelInputs(attention.AttentionInputs):
    """A validated context-parallel forward call: the rank's shards as ``attention``'s record (no tiles, no
    variants), its process group and sequence layout."""

    group: Any
    layout: SequenceLayout


def check_layout(caps: Capabilities, layout: object) -> SequenceLayout:
    """The sequence layout must be one of SEQUENCE_LAYOUTS and declared by the backend."""
    if layout not in SEQUENCE_LAYOUTS:
        raise InvalidInputError(f"layout must be one of {list(SEQUENCE_LAYOUTS)}, got {layout!r}")
    if layout not in caps.context_parallel:
        raise InvalidInputError(f"layout {layout!r} is not supported (declared: {list(caps.context_parallel)})")
    return layout  # type: ignore[return-value]


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group: Any = None,
          layout: str = "contiguous", causal: bool | str | None = None,
          scale: float | None = None) -> ContextParallelInputs:
    """The boundary check: the local shards as ``attention``'s inputs (validate.attention_args), the layout."""
    chosen = check_layout(caps, layout)
    variant, resolved = validate.attention_args(caps, q, k, v, causal=causal, scale=scale)
    return ContextParallelInputs(q, k, v, variant, resolved, group=group, layout=chosen)


SPEC: OpSpec[ContextParallelInputs] = OpSpec(
    name="attention_context_parallel",
    signature="attention_context_parallel(q, k, v, *, group=None, layout='contiguous', causal=None, scale=None)"
              " -> (out, lse)",
    inputs=("q", "k", "v"), outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.dtypes if caps.context_parallel else (), validate=check,
    expected=attention.expected,  # the rank's shards, shaped as the single-device forward's
    # DIST-1: the ranks' shards, put back at their global positions, against the global problem's dense oracle
    oracle=attention.oracle, naive=attention.naive, multipliers=attention.SPEC.multipliers,
)
