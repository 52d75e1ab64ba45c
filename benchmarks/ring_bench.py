"""Ring attention over W GPUs against one GPU at the same sequence length: scaling and overlap.

    python -m benchmarks.ring_bench [--seq-len 131072] [--world 2] [--heads 8] [--head-dim 128]
        [--inner triton] [--output ring.json]

One GPU: the inner backend's ``attention`` on the whole problem (``t1``). W GPUs (NCCL, one process each, the
sequence in the layout given): per rank the ring forward (``ring``), the transfers alone (W - 1 passes of the
rank's K, V shard around the ring: ``comm``) and the block computations alone (the same inner calls on
stand-in K, V of the shard's shape, no transfer: ``compute``); each a median over the repeats, the slowest rank
taken. Reported: ``scaling_efficiency = t1 / (W · ring)`` (1 = perfect), and ``overlap = (comm + compute -
ring) / comm`` clipped to 0..1, the share of the communication hidden behind the computation. Causal problems
use the zig-zag layout, others the contiguous one. Needs W CUDA devices; on fewer it prints why and exits 0
without writing. ``--device cpu`` runs the same on W CPU processes over gloo (a check of the script, with
``--inner reference-tiled``; its figures say nothing about GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

#: timed repeats per figure (after one warm-up call)
REPEATS = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ring_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--inner", default="triton", help="the single-device backend of the blocks")
    parser.add_argument("--causal", action="store_true", help="causal (top-left), zig-zag layout")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--output", type=Path, default=Path("results/ring-bench.json"))
    return parser.parse_args(argv)


def median_seconds(fn: Callable[[], object], device: str) -> float:
    """Median wall time of ``fn`` over REPEATS calls after a warm-up, the device synchronised around each."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inner_backend(name: str) -> Any:
    from implementations.registry import discover, select

    entry = select(discover(), [name])[0]
    if entry.backend is None:
        raise SystemExit(f"ring_bench: backend {name} unavailable: {entry.unavailable}")
    return entry.backend


def problem(args: argparse.Namespace, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (1, args.heads, args.seq_len, args.head_dim)
    return tuple(torch.randn(shape, generator=g, dtype=torch.bfloat16).to(device) for _ in range(3))  # type: ignore[return-value]


def one_device_seconds(inner: Any, args: argparse.Namespace, causal: str | None) -> float:
    """The whole problem on GPU 0 with the inner backend alone; its memory is freed before the ranks start."""
    qkv = problem(args, args.device)
    return median_seconds(lambda: inner.attention(*qkv, causal=causal), args.device)


def rank_main(rank: int, args: argparse.Namespace, rendezvous: str, found: Any) -> None:
    """One rank: time the ring forward, its transfers alone and its computations alone."""
    import torch.distributed as dist

    from implementations.ring_attention import Ring, RingAttention
    from implementations.sequence_layout import even_lengths, shard, zigzag_lengths

    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", init_method=f"file://{rendezvous}",
                            rank=rank, world_size=args.world,
                            timeout=timedelta(seconds=300))
    layout = "zigzag" if args.causal else "contiguous"
    causal = "top_left" if args.causal else None
    lengths = (zigzag_lengths if args.causal else even_lengths)(args.seq_len, args.world)
    q, k, v = (shard(x, layout, lengths, rank) for x in problem(args, "cpu"))
    q, k, v = q.to(args.device), k.to(args.device), v.to(args.device)
    inner = inner_backend(args.inner)
    ring_backend = RingAttention(inner)
    ring = Ring(None, layout, q.shape[2], k.shape[2], q.device)

    def forward() -> object:
        return ring_backend.attention_context_parallel(q, k, v, layout=layout, causal=causal)

    def transfers() -> None:
        block = [k, v]
        for step in range(args.world - 1):
            block = ring.pass_on(block, (rank - step) % args.world).wait()

    def computations() -> None:
        for step in range(args.world):
            for qc, kc, piece in ring.pairs((rank - step) % args.world, causal):
                # this rank's own K, V stand in for rank src's: every shard has one length (S a multiple of 2W)
                keys = slice(kc.local + piece.key0, kc.local + piece.key1)
                rows = slice(qc.local + piece.row0, qc.local + piece.row1)
                inner.attention(q[:, :, rows], k[:, :, keys], v[:, :, keys], causal=piece.causal)

    timings = {"ring": median_seconds(forward, args.device), "comm": median_seconds(transfers, args.device),
               "compute": median_seconds(computations, args.device)}
    found.put((rank, timings))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seq_len % (2 * args.world):
        print(f"ring_bench: --seq-len must be a multiple of 2 x --world ({2 * args.world}), so every shard is alike")
        return 2
    devices = torch.cuda.device_count() if args.device == "cuda" else args.world
    if devices < args.world:
        print(f"ring_bench: {args.world} GPUs needed, {devices} here; nothing measured")
        return 0
    causal = "top_left" if args.causal else None
    t1 = one_device_seconds(inner_backend(args.inner), args, causal)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    ctx = torch.multiprocessing.get_context("spawn")
    found = ctx.Queue()
    fd, rendezvous = tempfile.mkstemp(prefix="attnspec-ring-")
    os.close(fd)
    os.unlink(rendezvous)  # the file store creates it
    procs = [ctx.Process(target=rank_main, args=(r, args, rendezvous, found)) for r in range(args.world)]
    for proc in procs:
        proc.start()
    per_rank = dict(found.get(timeout=1200) for _ in procs)
    for proc in procs:
        proc.join()
    slowest = {key: max(t[key] for t in per_rank.values()) for key in ("ring", "comm", "compute")}
    overlap = (slowest["comm"] + slowest["compute"] - slowest["ring"]) / slowest["comm"] if slowest["comm"] else 0.0
    doc = {"kind": "ring-bench", "provenance": _provenance(), "seq_len": args.seq_len, "world": args.world,
           "heads": args.heads, "head_dim": args.head_dim, "dtype": "bfloat16", "device": args.device,
           "inner": args.inner, "causal": causal, "layout": "zigzag" if args.causal else "contiguous",
           "one_device_s": t1,
           "per_rank_s": {str(r): t for r, t in sorted(per_rank.items())}, "slowest_rank_s": slowest,
           "scaling_efficiency": t1 / (args.world * slowest["ring"]), "speedup": t1 / slowest["ring"],
           "overlap": min(1.0, max(0.0, overlap))}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("seq_len", "world", "causal", "one_device_s", "slowest_rank_s",
                                          "scaling_efficiency", "speedup", "overlap")}))
    return 0


def _provenance() -> dict[str, Any]:
    from conformance.codec import to_json
    from conformance.provenance import collect

    return to_json(collect())


if __name__ == "__main__":
    sys.exit(main())
