"""Runs DIST cases on a group of rank processes (torch.distributed: gloo on the CPU, NCCL on CUDA).

A :class:`RankPool` spawns up to ``POOL_WORLD`` (4) processes (``torch.multiprocessing``, start method *spawn*),
each of which joins the default process group and the groups of its first 1 and 2 ranks, loads the backend
under test (pickled from the caller), then runs the jobs it is handed on the group of the job's world size
(so the backend is handed a group that is not always the default one): it draws the case's global inputs
from the case's seed (the same on every rank), keeps its shard
(``implementations.sequence_layout``), calls the backend's ``attention_context_parallel`` (and its backward)
through a sealed call (outputs poisoned, inputs checked unchanged, outputs checked against the contract) and
sends its shard of the results back. Pools are kept per (backend, device) for the whole pytest process, so a
chapter pays the start of its ranks once; the ranks die with their parent. The ranks allocate large blocks
with mmap (glibc's ``M_MMAP_THRESHOLD`` fixed at 64 KiB), so freed memory leaves the resident set and the
CPU memory probe of DIST-7 sees each call's own allocations.
"""

from __future__ import annotations

import atexit
import os
import queue
import tempfile
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from conformance.dist_cases import DistCase, dist_inputs
from conformance.memory import peak_extra
from implementations.base import BackendLike
from implementations.sequence_layout import shard

#: ranks of a pool: the largest world size the chapter asks for
POOL_WORLD = 4
#: world sizes with a group of their own in every pool (the first ranks of the pool)
GROUP_SIZES = (1, 2, POOL_WORLD)
#: seconds a rank waits in a collective before it gives up (a peer that died or raised)
COLLECTIVE_TIMEOUT_S = 120
#: seconds the caller waits for a rank's answer to one job; then the pool is ended and the next job starts one
JOB_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class DistJob:
    """One case for every rank: the case, its seed, whether to run the backward and probe memory."""

    case: DistCase
    seed: int
    backward: bool = False
    probe_memory: bool = False


@dataclass
class RankResult:
    """One rank's shard of the outputs (CPU tensors), its peak extra memory, or the error it met."""

    rank: int
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    peak_bytes: int | None = None
    probe: str = ""
    error: str | None = None


class RankPool:
    """``world`` rank processes in one process group, running :class:`DistJob` s for one backend on the
    group of the first ``job.case.world`` ranks."""

    def __init__(self, backend: BackendLike, world: int, device: str) -> None:
        ctx = torch.multiprocessing.get_context("spawn")
        fd, rendezvous = tempfile.mkstemp(prefix="attnspec-dist-")
        os.close(fd)
        os.unlink(rendezvous)  # the file store creates it
        self.world = world
        self.jobs = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_rank_main, daemon=True,
                                  args=(rank, world, device, rendezvous, backend, self.jobs[rank], self.results))
                      for rank in range(world)]
        for proc in self.procs:
            proc.start()

    def run(self, job: DistJob) -> list[RankResult]:
        """The result of ``job`` on each of its ranks, in rank order (RuntimeError when a rank died or did not
        answer)."""
        world = job.case.world
        if world not in GROUP_SIZES or world > self.world:
            raise ValueError(f"no group of {world} ranks in a pool of {self.world} (sizes {GROUP_SIZES})")
        for jobs in self.jobs[:world]:
            jobs.put(job)
        found: dict[int, RankResult] = {}
        while len(found) < world:
            try:
                result = self.results.get(timeout=JOB_TIMEOUT_S)
            except queue.Empty:
                dead = [p.pid for p in self.procs if not p.is_alive()]
                self.kill()
                raise RuntimeError(f"ranks {sorted(set(range(world)) - set(found))} did not answer within "
                                   f"{JOB_TIMEOUT_S:g} s (dead: {dead}); the pool was ended") from None
            found[result.rank] = result
        return [found[r] for r in range(world)]

    @property
    def alive(self) -> bool:
        return all(proc.is_alive() for proc in self.procs)

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
        self.kill()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()


_POOLS: dict[tuple[str, str], RankPool] = {}


def pool_for(backend: BackendLike, device: str) -> RankPool:
    """The pool of ranks running ``backend`` on ``device`` (one GPU each on CUDA, as many as there are up to
    POOL_WORLD), started at its first use."""
    key = (backend.name, device)
    if key in _POOLS and not _POOLS[key].alive:  # ended after a job that hung, or a rank died
        _POOLS.pop(key).kill()
    if key not in _POOLS:
        world = min(POOL_WORLD, torch.cuda.device_count()) if device == "cuda" else POOL_WORLD
        _POOLS[key] = RankPool(backend, world, device)
    return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def _rank_main(rank: int, world: int, device: str, rendezvous: str, backend: BackendLike,
               jobs: Any, results: Any) -> None:
    """A rank process: join the group, then run jobs until told to stop (None)."""
    import torch.distributed as dist

    from conformance.supervisor import DIE_WITH_PARENT

    if DIE_WITH_PARENT is not None:
        DIE_WITH_PARENT()
    _mmap_large_blocks()
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{rendezvous}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    groups = {size: dist.new_group(list(range(size))) for size in GROUP_SIZES if size <= world}
    try:
        while (job := jobs.get()) is not None:
            try:
                results.put(_execute(backend, job, rank, groups[job.case.world]))
            except Exception:  # reported to the caller, which fails the case with it
                results.put(RankResult(rank, error=traceback.format_exc(limit=8)))
    finally:
        dist.destroy_process_group()


def _mmap_large_blocks() -> None:
    """glibc: allocate blocks of 64 KiB and more with mmap, always (no dynamic threshold), so that freeing them
    returns them to the system and the resident-set probe sees the next call's allocations."""
    import ctypes

    m_mmap_threshold = -3
    try:
        ctypes.CDLL(None).mallopt(m_mmap_threshold, 64 * 1024)
    except (OSError, AttributeError):  # not glibc: the probe may under-report, never over-report
        pass


def _execute(backend: BackendLike, job: DistJob, rank: int, group: object) -> RankResult:
    """Run ``job`` on this rank: its shards in, its shards of the outputs out."""
    from conformance.trial import SealedCall, seal

    case = job.case
    q, k, v, dout = dist_inputs(case, job.seed)
    q_lengths, k_lengths = case.q_lengths(), case.k_lengths()
    local = {"q": shard(q, case.seq_layout, q_lengths, rank), "k": shard(k, case.seq_layout, k_lengths, rank),
             "v": shard(v, case.seq_layout, k_lengths, rank)}
    kwargs = {"group": group, "layout": case.seq_layout, "causal": case.causal}

    def sealed() -> SealedCall:
        return seal(backend.attention_context_parallel, "attention_context_parallel", case.device,
                    (local["q"], local["k"], local["v"]), kwargs)

    forward = sealed()
    result = RankResult(rank)
    if job.probe_memory:  # after a warm-up call: what a first call sets up once (connections, pools) is not held
        forward.run()
        forward = sealed()
        _, peak = peak_extra(forward.run, case.device)
        result.peak_bytes, result.probe = peak.bytes, peak.probe
    else:
        forward.run()
    out, lse = forward.verify()
    result.outputs = {"out": out.cpu(), "lse": lse.cpu()}
    if job.backward:
        local_dout = shard(dout, case.seq_layout, q_lengths, rank)
        backward = seal(backend.attention_context_parallel_backward, "attention_context_parallel_backward",
                        case.device, (local["q"], local["k"], local["v"], out, lse, local_dout), kwargs)
        backward.run()
        dq, dk, dv = backward.verify()
        result.outputs |= {"dq": dq.cpu(), "dk": dk.cpu(), "dv": dv.cpu()}
    return result
