"""Ring attention with a planted defect in the merge across ranks, and its defect-free twin.

Plugged into the suite with ``--backend tests.dist_mutants:mutant_ring_no_rescale`` (or ``:ring_control``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from implementations import ops
from implementations.ops import implementation
from implementations.reference_tiled import TiledReferenceBackend
from implementations.ring_attention import RingAttention


class RingNoRescale(RingAttention):
    """Forgets to rescale the running output when a block's statistics raise the log-sum-exp:
    ``O = O_a + e^(L_b - L)·O_b`` instead of ``e^(L_a - L)·O_a + e^(L_b - L)·O_b`` (lse stays right)."""

    def merge(self, out: torch.Tensor, lse: torch.Tensor, part_out: torch.Tensor, part_lse: torch.Tensor) -> None:
        new_lse = torch.logaddexp(lse, part_lse.to(lse.dtype))
        take = torch.where(torch.isneginf(new_lse), 0.0, torch.exp(part_lse.to(lse.dtype) - new_lse))
        out.add_(take.unsqueeze(-1) * part_out.to(out.dtype))
        lse.copy_(new_lse)


class RingGathersKV(RingAttention):
    """Right values, no memory saved: all-gathers every rank's K and V (padded to the longest shard) before
    the ring."""

    @implementation("attention_context_parallel")
    def attention_context_parallel(self, inp: ops.ContextParallelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        group = inp.group if inp.group is not None else dist.group.WORLD
        longest = torch.tensor([inp.k.shape[2]])
        dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=group)
        gathered = {}
        for name, x in (("k", inp.k), ("v", inp.v)):
            padded = F.pad(x, (0, 0, 0, int(longest) - x.shape[2])).contiguous()
            gathered[name] = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
            dist.all_gather(gathered[name], padded, group=group)
        result = RingAttention.attention_context_parallel(self, inp.q, inp.k, inp.v, group=inp.group,
                                                          layout=inp.layout, causal=inp.causal, scale=inp.scale)
        del gathered
        return result


def ring_control() -> RingAttention:
    backend = RingAttention(TiledReferenceBackend())
    backend.name = "ring-control"
    return backend


def mutant_ring_no_rescale() -> RingAttention:
    backend = RingNoRescale(TiledReferenceBackend())
    backend.name = "mutant-ring-no-rescale"
    return backend


def mutant_ring_gathers_kv() -> RingAttention:
    backend = RingGathersKV(TiledReferenceBackend())
    backend.name = "mutant-ring-gathers-kv"
    return backend
