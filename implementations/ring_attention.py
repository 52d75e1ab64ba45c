"""Ring attention: context-parallel attention (SPEC DIST) built on any single-device backend returning lse.

Each rank keeps its query shard and passes its K, V shard around the ring of the process group: at step t
rank r holds the shard of rank ``(r - t) mod W``, sends it on to ``r + 1`` and receives the next from
``r - 1`` while it computes (the transfers are posted before the compute, so they overlap it). Each query
chunk × key chunk pair is answered by the inner backend's ``attention`` (``implementations.ring_blocks``
cuts the causal mask into calls it answers exactly) and folded into a running ``(out, lse)`` with the
softmax-statistics merge (SMX-4). No rank holds more than its own shard and the one in flight.

The backward passes K, V with their dK, dV partial sums around the ring: each rank adds the inner
backend's ``attention_backward`` of its queries against the shard it holds (called with the global ``out``
and ``lse``, so an inner backend that recomputes P from lse — ``saves="lse"`` — gives the exact block
gradients) and sends the sums on; after W steps they are back at their owner. dQ stays local.

Built-ins: ``ring-reference-tiled`` on the CPU (gloo), ``ring-triton`` where CUDA is (NCCL).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from implementations import ops
from implementations.base import (
    Backend,
    BackendLike,
    BackendUnavailable,
    Capabilities,
    CausalVariant,
    InvalidInputError,
    new_output,
    wide_dtype,
)
from implementations.ops import implementation
from implementations.ring_blocks import Piece, chunk_delta, merge, pieces
from implementations.sequence_layout import SEQUENCE_LAYOUTS, Chunk, SequenceLayout, chunks, zigzag_lengths


class RingAttention(Backend):
    """Context-parallel attention over a process group, each block computed by ``inner``."""

    def __init__(self, inner: BackendLike) -> None:
        self.inner = inner
        self.name = f"ring-{inner.name}"
        self.description = f"ring attention over torch.distributed, blocks by {inner.name}"
        caps = inner.capabilities
        # what the ring inherits from its inner backend: the attention limits; nothing else is declared
        self.capabilities = Capabilities(
            devices=caps.devices, dtypes=caps.dtypes,
            backward_dtypes=caps.backward_dtypes if caps.saves == "lse" else (),
            head_dims=caps.head_dims, head_dim_multiple=caps.head_dim_multiple, head_dim_set=caps.head_dim_set,
            max_seq_len=caps.max_seq_len, seq_len_multiple=caps.seq_len_multiple, max_batch=caps.max_batch,
            contiguous_only=caps.contiguous_only, causal=caps.causal, causal_default=caps.causal_default,
            gqa=caps.gqa, memory=caps.memory, saves=caps.saves, context_parallel=SEQUENCE_LAYOUTS,
            emulated=caps.emulated,
            notes=(f"blocks by {inner.name}; K/V shards passed around the ring, merged by SMX-4",))

    @implementation("attention_context_parallel")
    def attention_context_parallel(self, inp: ops.ContextParallelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """DIST-1..6: the ring forward (module docstring)."""
        ring = Ring(inp.group, inp.layout, inp.q.shape[2], inp.k.shape[2], inp.q.device)
        acc = torch.zeros(inp.q.shape, dtype=wide_dtype(inp.q.dtype), device=inp.q.device)
        acc_lse = torch.full(inp.q.shape[:3], float("-inf"), dtype=acc.dtype, device=acc.device)
        block = [inp.k, inp.v]
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            pending = ring.pass_on(block, src) if step < ring.world - 1 else None
            for qc, kc, piece in ring.pairs(src, inp.causal):
                rows = slice(qc.local + piece.row0, qc.local + piece.row1)
                keys = slice(kc.local + piece.key0, kc.local + piece.key1)
                out, lse = self.inner.attention(inp.q[:, :, rows], block[0][:, :, keys], block[1][:, :, keys],
                                                causal=piece.causal, scale=inp.scale)
                self.merge(acc[:, :, rows], acc_lse[:, :, rows], out, lse)
            block = pending.wait() if pending else block
        out = new_output(inp.q.shape, inp.q.dtype, inp.q.device)
        lse = new_output(acc_lse.shape, acc_lse.dtype, acc_lse.device)
        out.copy_(acc)
        lse.copy_(acc_lse)
        return out, lse

    def merge(self, out: torch.Tensor, lse: torch.Tensor, part_out: torch.Tensor, part_lse: torch.Tensor) -> None:
        """Fold one block's partial result into the running one (SMX-4)."""
        merge(out, lse, part_out, part_lse)

    @implementation("attention_context_parallel_backward")
    def attention_context_parallel_backward(self, inp: ops.ContextParallelBackwardInputs
                                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DIST-2: the ring backward (module docstring)."""
        ring = Ring(inp.group, inp.layout, inp.q.shape[2], inp.k.shape[2], inp.q.device)
        wide = wide_dtype(inp.q.dtype)
        dq = torch.zeros(inp.q.shape, dtype=wide, device=inp.q.device)
        block = [inp.k, inp.v, torch.zeros(inp.k.shape, dtype=wide, device=inp.k.device),
                 torch.zeros(inp.v.shape, dtype=wide, device=inp.v.device)]
        for step in range(ring.world):
            src = (ring.rank - step) % ring.world
            for qc, kc, piece in ring.pairs(src, inp.causal):
                rows = slice(qc.local + piece.row0, qc.local + piece.row1)
                keys = slice(kc.local + piece.key0, kc.local + piece.key1)
                grads = self.inner.attention_backward(
                    inp.q[:, :, rows], block[0][:, :, keys], block[1][:, :, keys], inp.out[:, :, rows],
                    inp.lse[:, :, rows], inp.dout[:, :, rows], causal=piece.causal, scale=inp.scale)
                dq[:, :, rows] += grads[0]
                block[2][:, :, keys] += grads[1]
                block[3][:, :, keys] += grads[2]
            if step < ring.world - 1:
                block = ring.pass_on(block, src).wait()
        home = ring.pass_on(block[2:], ring.rank + 1).wait() if ring.world > 1 else block[2:]
        return tuple(_output(x, like) for x, like in zip((dq, *home), (inp.q, inp.k, inp.v)))  # type: ignore[return-value]


def _output(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = new_output(like.shape, like.dtype, like.device)
    out.copy_(value)
    return out


class Ring:
    """One call's view of the ring: the group, this rank, every rank's chunks of Q and of K, V."""

    def __init__(self, group: object, layout: SequenceLayout, local_q: int, local_k: int,
                 device: torch.device) -> None:
        self.group = group if group is not None else dist.group.WORLD
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        on = device if dist.get_backend(self.group) == "nccl" else torch.device("cpu")
        mine = torch.tensor([local_q, local_k], dtype=torch.long, device=on)
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine, group=self.group)
        q_lengths, k_lengths = ([int(g[i]) for g in gathered] for i in (0, 1))
        self.Sq, self.Sk = sum(q_lengths), sum(k_lengths)
        for name, lengths, S in (("q", q_lengths, self.Sq), ("k", k_lengths, self.Sk)):
            if layout == "zigzag" and lengths != zigzag_lengths(S, self.world):
                raise InvalidInputError(f"zigzag layout: the ranks' {name} lengths {lengths} are not those of a "
                                        f"sequence of {S} cut into {2 * self.world} chunks "
                                        f"({zigzag_lengths(S, self.world)})")
        self.q_chunks = chunks(layout, q_lengths, self.rank)
        self.k_chunks = [chunks(layout, k_lengths, r) for r in range(self.world)]

    def pairs(self, src: int, causal: CausalVariant | None) -> list[tuple[Chunk, Chunk, Piece]]:
        """Every (query chunk, key chunk of rank ``src``, piece) this rank computes at one step."""
        return [(qc, kc, piece) for qc in self.q_chunks for kc in self.k_chunks[src]
                for piece in pieces(qc.length, kc.length, chunk_delta(causal, self.Sq, self.Sk, qc.start, kc.start))]

    def pass_on(self, tensors: list[torch.Tensor], src: int) -> Transfer:
        """Send ``tensors`` (rank ``src``'s shard) to the next rank and receive the previous rank's, which
        holds the shard of ``src - 1``; returns at once, :meth:`Transfer.wait` gives the received tensors."""
        next_rank = dist.get_global_rank(self.group, (self.rank + 1) % self.world)
        prev_rank = dist.get_global_rank(self.group, (self.rank - 1) % self.world)
        incoming_len = sum(c.length for c in self.k_chunks[(src - 1) % self.world])
        received = [torch.empty(_with_len(t.shape, incoming_len), dtype=t.dtype, device=t.device) for t in tensors]
        ops_list = [dist.P2POp(dist.isend, t.contiguous(), next_rank, self.group) for t in tensors]
        ops_list += [dist.P2POp(dist.irecv, t, prev_rank, self.group) for t in received]
        return Transfer(dist.batch_isend_irecv(ops_list), received)


class Transfer:
    """Posted sends and receives; :meth:`wait` completes them and returns what was received."""

    def __init__(self, requests: list[object], received: list[torch.Tensor]) -> None:
        self.requests = requests
        self.received = received

    def wait(self) -> list[torch.Tensor]:
        for request in self.requests:
            request.wait()  # type: ignore[attr-defined]
        return self.received


def _with_len(shape: torch.Size, length: int) -> tuple[int, ...]:
    return (*shape[:2], length, *shape[3:])


def backends() -> list[BackendLike]:
    """``ring-reference-tiled`` (CPU, gloo) and, where CUDA is, ``ring-triton`` (NCCL)."""
    if not dist.is_available():
        raise BackendUnavailable("torch.distributed is not available in this torch build")
    from implementations.reference_tiled import TiledReferenceBackend

    found: list[BackendLike] = [RingAttention(TiledReferenceBackend())]
    if torch.cuda.is_available():
        try:
            from implementations.triton import backends as triton_backends

            found.append(RingAttention(_single(triton_backends())))
        except BackendUnavailable:
            pass
    return found


def _single(made: BackendLike | list[BackendLike]) -> BackendLike:
    return made[0] if isinstance(made, list) else made
