"""Internal baseline rows: vendor-library formulations that speed-ups are measured against.

They are backends in the contract's sense (gated and timed like any other) but live here, not in
``implementations/``, because they are yardsticks rather than kernels under test:

- ``torch-compile``: ``torch.compile`` of the KD formula below (CUDA only; the KD baseline on a GPU);
- ``torch.sum``: ``torch.sum`` (the reduction baseline, CPU and CUDA);
- ``torch-eager``: ``m = amax(x)``, ``l = sum(exp(x - m))`` in eager torch (the softmax-statistics baseline).

The per-(operation, device) baseline names, including the registered backends ``torch-flash``,
``reference`` and ``torch`` used for attention and for KD on the CPU, are in ``BASELINES``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from implementations.base import Backend, Capabilities, InvalidInputError
from implementations.ops import KDInputs, ReduceInputs, StatsInputs, implementation

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: (benchmark operation, device) -> the backend every speed-up of that operation is measured against
BASELINES: dict[tuple[str, str], str] = {
    **{(op, "cuda"): "torch-flash" for op in ("attention", "attention_backward", "attention_fwd_bwd")},
    **{(op, "cpu"): "reference" for op in ("attention", "attention_backward", "attention_fwd_bwd")},
    ("kd_loss", "cuda"): "torch-compile",
    ("kd_loss", "cpu"): "torch",
    ("softmax_stats", "cuda"): "torch-eager",
    ("softmax_stats", "cpu"): "torch-eager",
    ("reduce_sum", "cuda"): "torch.sum",
    ("reduce_sum", "cpu"): "torch.sum",
}
#: (benchmark operation, device) -> the rows every record of that operation is also set beside: the ratio of
#: each one's median to the record's (above 1: faster than it) is the record's ``vs[name]`` (issue 14: compiled
#: FlexAttention and SDPA cuDNN beside every attention row on the GPU)
REFERENCE_ROWS: dict[tuple[str, str], tuple[str, ...]] = {
    (op, "cuda"): ("flex", "torch-cudnn") for op in ("attention", "attention_backward", "attention_fwd_bwd")}
#: baselines that are vendor libraries: a speed-up above SUSPICIOUS_SPEEDUP over one of them is flagged
VENDOR_BASELINES = frozenset({"torch-flash", "torch-compile", "torch", "torch-eager", "torch.sum"})
SUSPICIOUS_SPEEDUP = 10.0


def kd_formula(s: torch.Tensor, t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The KD term of SPEC KD-1/KD-2 in float32 (alpha = 1, no labels):
    ``loss = T²·mean_rows KL(softmax(t/T) ‖ softmax(s/T))``, ``ds = T·(softmax(s/T) - softmax(t/T)) / N``."""
    T = temperature
    log_ps = F.log_softmax(s.float() / T, dim=-1)
    log_pt = F.log_softmax(t.float() / T, dim=-1)
    pt = log_pt.exp()
    loss = T * T * (pt * (log_pt - log_ps)).sum(dim=-1).mean()
    ds = (T * (log_ps.exp() - pt) / s.shape[0]).to(s.dtype)
    return loss, ds


class TorchCompileKD(Backend):
    """``torch.compile(kd_formula)``: what a user gets from the compiler without writing a kernel."""

    name = "torch-compile"
    description = "baseline: torch.compile of the unfused KD formula"
    capabilities = Capabilities(devices=("cuda",), dtypes=(), kd_dtypes=FLOAT_DTYPES)

    @functools.cached_property
    def _compiled(self) -> Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]:
        """``torch.compile(kd_formula)``, made on first use: importing the compiler takes seconds, which every
        process that lists the baselines (each asv benchmark process among them) would otherwise pay."""
        return torch.compile(kd_formula)

    @implementation("kd_loss")
    def kd_loss(self, inp: KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inp.labels is not None:
            raise InvalidInputError("the torch-compile baseline computes the pure KD term only (no labels)")
        loss, ds = self._compiled(inp.s, inp.t, inp.temperature)
        return loss, ds.reshape(inp.shape)


class TorchSum(Backend):
    """``torch.sum`` in float32; its order of additions is not declared."""

    name = "torch.sum"
    description = "baseline: torch.sum"
    capabilities = Capabilities(devices=("cpu", "cuda"), dtypes=(), reduce_dtypes=(torch.float32,))

    @implementation("reduce_sum")
    def reduce_sum(self, inp: ReduceInputs) -> tuple[torch.Tensor, None]:
        return torch.sum(inp.x), None


class TorchEagerStats(Backend):
    """Softmax statistics in two eager torch reductions: ``m = amax(x)``, ``l = sum(exp(x - m))``."""

    name = "torch-eager"
    description = "baseline: eager torch amax + sum(exp)"
    capabilities = Capabilities(devices=("cpu", "cuda"), dtypes=(), stats_dtypes=FLOAT_DTYPES)

    @implementation("softmax_stats")
    def softmax_stats(self, inp: StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        x = inp.x.float()
        m = x.amax(dim=-1)
        return m, torch.exp(x - m[:, None]).sum(dim=-1)


def baseline_backends() -> list[Backend]:
    """The internal baseline rows."""
    return [TorchCompileKD(), TorchSum(), TorchEagerStats()]
