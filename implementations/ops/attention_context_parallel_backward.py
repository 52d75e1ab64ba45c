"""``attention_context_parallel_backward(q, k, v, out, lse, dout, *, group=None, layout="contiguous",
causal=None, scale=None) -> (dq, dk, dv)`` (SPEC DIST-2).

The gradients of context-parallel attention: every argument is the rank's shard (``out`` and ``lse`` as
``attention_context_parallel`` returned them, ``dout`` like ``out``); ``dq, dk, dv`` are shaped and typed
like the rank's q, k, v and equal the rows of the single-device gradients at the rank's positions (dk, dv
summed over every rank's queries, and over the query heads sharing a KV head).

Oracle: the single-device ``attention_backward`` oracle (autograd through the float64 forward) of the global
problem, compared with the ranks' shards put back at their global positions.

Cost: 2.5 × the forward's FLOPs; each rank sends K, V ``W - 1`` times and the dK, dV partial sums ``W``
times around the ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from implementations import validate
from implementations.base import Capabilities
from implementations.ops import attention_backward
from implementations.ops.attention_context_parallel import check_layout
from implementations.ops.spec import OpSpec
from implementations.sequence_layout import SequenceLayout


@dataclass(frozen=True, kw_only=True)
class ContextParallelBackwardInputs(attention_backward.BackwardInputs):
    """A validated context-parallel backward call: the rank's shards as ``attention_backward``'s record (no
    tiles, no variants), its process group and sequence layout."""

    group: Any
    layout: SequenceLayout


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
          lse: torch.Tensor, dout: torch.Tensor, *, group: Any = None, layout: str = "contiguous",
          causal: bool | str | None = None, scale: float | None = None) -> ContextParallelBackwardInputs:
    """The boundary check: the local shards as ``attention_backward``'s inputs (validate.backward_args)."""
    chosen = check_layout(caps, layout)
    variant, resolved = validate.backward_args(caps, q, k, v, out, lse, dout, causal=causal, scale=scale)
    return ContextParallelBackwardInputs(q, k, v, variant, resolved, out=out, lse=lse, dout=dout, group=group,
                                         layout=chosen)


SPEC: OpSpec[ContextParallelBackwardInputs] = OpSpec(
    name="attention_context_parallel_backward",
    signature="attention_context_parallel_backward(q, k, v, out, lse, dout, *, group=None, "
              "layout='contiguous', causal=None, scale=None) -> (dq, dk, dv)",
    inputs=("q", "k", "v", "out", "lse", "dout"), outputs=("dq", "dk", "dv"),
    declared_dtypes=lambda caps: caps.backward_dtypes if caps.context_parallel else (), validate=check,
    expected=attention_backward.expected,  # the rank's shards, shaped as the single-device backward's
    # DIST-2: the ranks' gradient shards, put back at their global positions, against the global oracle's
    oracle=attention_backward.oracle, naive=attention_backward.naive, multipliers=attention_backward.SPEC.multipliers,
)
