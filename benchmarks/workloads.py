"""The workload table: every shape the benchmarks time, its FLOP or byte count, and how to call it.

``attnspec bench``, pytest-benchmark (``benchmarks/test_bench_pytest.py``) and asv
(``benchmarks/asv_suite.py``) all read this module. The FLOP and byte counts (SPEC.md "FLOP and byte counts
used by benchmarks") are each operation's, in its module of ``implementations/ops``; forward + backward is
``3.5 ×`` the forward.

Attention on a GPU: 16k tokens per batch, ``S ∈ {512, 1k, 2k, 4k, 8k, 16k}``, ``B = 16384 // S``,
``D ∈ {64, 128}`` with ``H = 32`` for ``D = 64`` and ``H = 16`` for ``D = 128`` (so ``H·D = 2048``, the
shapes of the H200 anchors in shared/anchors/), causal and not, bfloat16. On the CPU the same sweep runs on
small shapes in float32, and ``quick`` keeps a handful of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from implementations.base import AttentionCase, BackendLike, Case, RowsCase
from implementations.ops import attention, attention_backward, kd_loss, reduce_sum, softmax_stats

#: Benchmark operations. ``attention_fwd_bwd`` times a forward followed by a backward.
ATTENTION_OPS: tuple[str, ...] = ("attention", "attention_backward", "attention_fwd_bwd")
OPS: tuple[str, ...] = (*ATTENTION_OPS, "kd_loss", "softmax_stats", "reduce_sum")

#: The contract operations (implementations/base.py OPERATIONS) a benchmark operation calls.
CONTRACT_OPS: dict[str, tuple[str, ...]] = {
    "attention": ("attention",),
    "attention_backward": ("attention", "attention_backward"),  # out and lse come from the backend's forward
    "attention_fwd_bwd": ("attention", "attention_backward"),
    "kd_loss": ("kd_loss",),
    "softmax_stats": ("softmax_stats",),
    "reduce_sum": ("reduce_sum",),
}

#: The names of the outputs a bound call returns, in order (the correctness gate compares them).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "attention": ("out", "lse"),
    "attention_backward": ("dq", "dk", "dv"),
    "attention_fwd_bwd": ("out", "lse", "dq", "dk", "dv"),
    "kd_loss": ("loss", "ds"),
    "softmax_stats": ("m", "l"),
    "reduce_sum": ("value",),
}

#: The KD temperature of every KD workload (alpha = 1, no labels: the pure distillation term).
KD_TEMPERATURE = 2.0

TOKENS_PER_BATCH_GPU = 16384
GPU_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_QUICK_SEQ_LENS = (1024, 4096, 16384)
#: heads per head dim, so that H·D = 2048 at both head dims
HEADS_FOR_HEAD_DIM = {64: 32, 128: 16}
CPU_SEQ_LENS = (128, 256, 512, 1024)
CPU_QUICK_SEQ_LENS = (128, 256)
TOKENS_PER_BATCH_CPU = 1024
TOKENS_PER_BATCH_CPU_QUICK = 256
CPU_HEADS, CPU_QUICK_HEADS, CPU_HEAD_DIM = 4, 2, 64

#: memory-scaling sweeps (peak extra memory against S, B = 1)
MEMORY_SEQ_LENS = {"cuda": (1024, 2048, 4096, 8192, 16384, 32768), "cpu": (128, 256, 512, 1024)}
MEMORY_HEADS = {"cuda": 16, "cpu": 2}
MEMORY_HEAD_DIM = {"cuda": 128, "cpu": 64}


# ------------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class AttentionWorkload:
    """One attention shape for ``op`` in ``ATTENTION_OPS``: ``Q, K, V [B, H, S, D]`` (Hq = Hk, Sq = Sk)."""

    op: str
    B: int
    H: int
    S: int
    D: int
    causal: bool
    dtype: torch.dtype

    @property
    def label(self) -> str:
        """E.g. ``B16H16-S1024-D128-causal``."""
        return f"B{self.B}H{self.H}-S{self.S}-D{self.D}" + ("-causal" if self.causal else "")

    @property
    def flops(self) -> int:
        shape = (self.B, self.H, self.S, self.S, self.D, self.causal)
        forward, backward = attention.forward_flops(*shape), attention_backward.backward_flops(*shape)
        return {"attention": forward, "attention_backward": backward, "attention_fwd_bwd": forward + backward}[self.op]

    @property
    def min_bytes(self) -> None:
        return None

    @property
    def scale(self) -> float:
        """The default softmax scale ``1/sqrt(D)`` every call uses."""
        return 1.0 / math.sqrt(self.D)

    def describe(self) -> dict[str, object]:
        """The JSON ``workload`` object of a bench record."""
        return {"B": self.B, "Hq": self.H, "Hk": self.H, "Sq": self.S, "Sk": self.S, "D": self.D,
                "causal": self.causal, "flops": self.flops}

    def cases(self, backend: BackendLike, device: str) -> list[tuple[str, Case]]:
        """The contract (operation, case) pairs this workload needs; causal uses the backend's default
        variant (top-left and bottom-right coincide when Sq = Sk)."""
        variant = backend.capabilities.causal_default if self.causal else None
        case = AttentionCase(self.B, self.H, self.H, self.S, self.S, self.D, self.dtype, device, variant)
        return [(op, case) for op in CONTRACT_OPS[self.op]]


@dataclass(frozen=True)
class RowsWorkload:
    """A ``[rows, cols]`` workload: KD loss (``N × V``), softmax statistics, reduction (``rows = 1``, ``[n]``)."""

    op: str
    rows: int
    cols: int
    dtype: torch.dtype

    @property
    def label(self) -> str:
        """E.g. ``N8192-V131072`` (KD), ``8192x131072`` (softmax statistics), ``n2^28`` (reduction)."""
        if self.op == "kd_loss":
            return f"N{self.rows}-V{self.cols}"
        if self.op == "reduce_sum":
            n = self.cols
            return f"n2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"n{n}"
        return f"{self.rows}x{self.cols}"

    @property
    def flops(self) -> None:
        return None

    @property
    def min_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if self.op == "kd_loss":
            return kd_loss.min_bytes(self.rows, self.cols, itemsize)
        if self.op == "softmax_stats":
            return softmax_stats.min_bytes(self.rows, self.cols, itemsize)
        return reduce_sum.min_bytes(self.cols, itemsize)

    def describe(self) -> dict[str, object]:
        """The JSON ``workload`` object of a bench record."""
        if self.op == "kd_loss":
            return {"N": self.rows, "V": self.cols, "temperature": KD_TEMPERATURE, "min_bytes": self.min_bytes}
        if self.op == "reduce_sum":
            return {"n": self.cols, "min_bytes": self.min_bytes}
        return {"rows": self.rows, "cols": self.cols, "min_bytes": self.min_bytes}

    def cases(self, backend: BackendLike, device: str) -> list[tuple[str, Case]]:
        return [(op, RowsCase(self.rows, self.cols, self.dtype, device)) for op in CONTRACT_OPS[self.op]]


Workload = AttentionWorkload | RowsWorkload


def rates(workload: Workload, seconds: float) -> tuple[float | None, float | None]:
    """``(TFLOP/s, GB/s)`` of one call taking ``seconds``; the one that does not apply is None."""
    flops, nbytes = workload.flops, workload.min_bytes
    return (flops / seconds / 1e12 if flops is not None else None,
            nbytes / seconds / 1e9 if nbytes is not None else None)


def not_supported(backend: BackendLike, workload: Workload, device: str) -> list[str]:
    """The backend's declared reasons (``not_supported_reasons``) against every contract call it needs."""
    reasons: list[str] = []
    for op, case in workload.cases(backend, device):
        reasons += [r for r in backend.not_supported_reasons(op, case) if r not in reasons]
    return reasons


# ------------------------------------------------------------------------------------------------
# Tables


def _attention_table(op: str, device: str, quick: bool) -> list[AttentionWorkload]:
    if device == "cuda":
        seqs = GPU_QUICK_SEQ_LENS if quick else GPU_SEQ_LENS
        dims = (128,) if quick else (64, 128)
        return [AttentionWorkload(op, TOKENS_PER_BATCH_GPU // S, HEADS_FOR_HEAD_DIM[D], S, D, causal, torch.bfloat16)
                for D in dims for causal in (False, True) for S in seqs]
    seqs, tokens, heads = ((CPU_QUICK_SEQ_LENS, TOKENS_PER_BATCH_CPU_QUICK, CPU_QUICK_HEADS) if quick
                           else (CPU_SEQ_LENS, TOKENS_PER_BATCH_CPU, CPU_HEADS))
    return [AttentionWorkload(op, tokens // S, heads, S, CPU_HEAD_DIM, causal, torch.float32)
            for causal in (False, True) for S in seqs]


#: ``[rows, cols]`` tables: (device, quick) -> list of (rows, cols, dtype)
_ROWS_TABLES: dict[str, dict[tuple[str, bool], list[tuple[int, int, torch.dtype]]]] = {
    "kd_loss": {
        ("cuda", False): [(8192, V, dt) for dt in (torch.float32, torch.bfloat16) for V in (32768, 131072)],
        ("cuda", True): [(8192, 32768, torch.float32)],
        ("cpu", False): [(256, 4096, torch.float32), (256, 32768, torch.float32)],
        ("cpu", True): [(64, 4096, torch.float32)],
    },
    "softmax_stats": {
        ("cuda", False): [(8192, L, dt) for dt in (torch.float32, torch.bfloat16) for L in (32768, 131072)],
        ("cuda", True): [(8192, 32768, torch.float32)],
        ("cpu", False): [(256, 4096, torch.float32), (256, 32768, torch.float32)],
        ("cpu", True): [(64, 4096, torch.float32)],
    },
    "reduce_sum": {
        ("cuda", False): [(1, 1 << p, torch.float32) for p in (24, 26, 28)],
        ("cuda", True): [(1, 1 << 26, torch.float32)],
        ("cpu", False): [(1, 1 << p, torch.float32) for p in (18, 20)],
        ("cpu", True): [(1, 1 << 16, torch.float32)],
    },
}


def workloads(op: str, device: str, quick: bool = False) -> list[Workload]:
    """The table of ``op`` for ``device`` (``"cuda"`` or ``"cpu"``); ``quick`` keeps a small subset."""
    if op not in OPS:
        raise ValueError(f"unknown benchmark operation {op!r} (known: {', '.join(OPS)})")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if op in ATTENTION_OPS:
        return list(_attention_table(op, device, quick))
    return [RowsWorkload(op, r, c, dt) for r, c, dt in _ROWS_TABLES[op][(device, quick)]]


def memory_workloads(op: str, device: str) -> list[AttentionWorkload]:
    """The memory-scaling sweep of ``op`` (``attention`` or ``attention_backward``): B = 1, non-causal,
    S over ``MEMORY_SEQ_LENS[device]``."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return [AttentionWorkload(op, 1, MEMORY_HEADS[device], S, MEMORY_HEAD_DIM[device], False, dtype)
            for S in MEMORY_SEQ_LENS[device]]


# ------------------------------------------------------------------------------------------------
# Inputs and calls


def make_inputs(workload: Workload, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Fresh seeded random inputs of ``workload``, drawn on ``device`` itself (GPU workloads reach
    ``8192 × 131072`` elements, too large to draw on the CPU and copy over on every record).

    Attention: ``q, k, v`` (and ``dout`` for backward ops) standard normal. KD: ``s, t`` standard normal.
    Softmax statistics: ``x`` standard normal. Reduction: ``x`` uniform in [0, 1), so the sum is well
    conditioned and any summation order meets the gate.
    """
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(workload.dtype)

    if isinstance(workload, AttentionWorkload):
        shape = (workload.B, workload.H, workload.S, workload.D)
        inputs = {"q": randn(*shape), "k": randn(*shape), "v": randn(*shape)}
        if workload.op != "attention":
            inputs["dout"] = randn(*shape)
        return inputs
    if workload.op == "kd_loss":
        return {"s": randn(workload.rows, workload.cols), "t": randn(workload.rows, workload.cols)}
    if workload.op == "softmax_stats":
        return {"x": randn(workload.rows, workload.cols)}
    return {"x": torch.rand((workload.cols,), generator=g, device=device, dtype=torch.float32).to(workload.dtype)}


def bind(backend: BackendLike, workload: Workload, inputs: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    """A zero-argument call of ``backend`` on ``inputs`` returning the outputs named in ``OUTPUTS[op]``.

    For ``attention_backward`` the backend's own forward runs once here, outside the timed call, to give
    the ``out`` and ``lse`` its backward reads.
    """
    b: object = backend
    op = workload.op
    if isinstance(workload, AttentionWorkload):
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        causal = True if workload.causal else None

        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            return b.attention(q, k, v, causal=causal, scale=None)  # type: ignore[attr-defined]

        if op == "attention":
            return forward

        def backward(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return b.attention_backward(q, k, v, out, lse, inputs["dout"], causal=causal,  # type: ignore[attr-defined]
                                        scale=None)

        if op == "attention_backward":
            out, lse = forward()
            return lambda: backward(out, lse)

        def forward_backward() -> tuple[torch.Tensor, ...]:
            out, lse = forward()
            return (out, lse, *backward(out, lse))

        return forward_backward
    if op == "kd_loss":
        s, t = inputs["s"], inputs["t"]
        return lambda: b.kd_loss(s, t, temperature=KD_TEMPERATURE)  # type: ignore[attr-defined]
    x = inputs["x"]
    if op == "softmax_stats":
        return lambda: b.softmax_stats(x)  # type: ignore[attr-defined]
    return lambda: (b.reduce_sum(x)[0],)  # type: ignore[attr-defined]  # the schedule is not an output

