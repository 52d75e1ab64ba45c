"""``kd_loss(s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100) -> (loss, ds)`` (SPEC KD).

Student ``s`` and teacher ``t`` logits ``[N, V]`` (or ``[..., V]``, flattened to rows), temperature T > 0,
integer ``labels`` of the leading shape. ``loss`` (0-dim, float32; float64 for float64 logits) is the mean
over rows whose label is not ``ignore_index`` of ``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)``;
without labels every row counts and α is 1. ``ds = d loss / d s``, shaped and typed like ``s``.

Cost: the fewest bytes are reading ``s`` and ``t`` once and writing ``ds`` once: ``3·N·V·itemsize``.

Oracle: the unfused formula in float64 by autograd, spelling out ``Σ p_t (log p_t - log p_s)``; naive: what
users write, ``F.kl_div(..., log_target=True)`` and ``F.cross_entropy`` per row, in dtype ``t``. Benchmark:
the pure distillation term (α = 1, no labels, T = 2) on standard normal logits, against ``torch.compile`` of
the unfused formula on a GPU and the ``torch`` backend on the CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from implementations import validate
from implementations.base import Backend, Capabilities, InvalidInputError, wide_dtype
from implementations.ops.spec import Expected, OpSpec
from implementations.ops.workload import Baseline, BenchOp, Reference, RowsWorkload, normal, row_slices


@dataclass(frozen=True)
class KDInputs:
    """A validated KD call: ``s``, ``t`` as ``[N, V]`` rows, ``labels`` flat (or None, and then α = 1), and the
    caller's logits shape, which ``ds`` takes."""

    s: torch.Tensor
    t: torch.Tensor
    temperature: float
    alpha: float
    labels: torch.Tensor | None
    ignore_index: int
    shape: tuple[int, ...]


def check(caps: Capabilities, s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float = 1.0,
          labels: torch.Tensor | None = None, ignore_index: int = -100) -> KDInputs:
    """The boundary check (validate.kd_args, KD-8)."""
    s2, t2, y, a = validate.kd_args(caps, s, t, temperature=temperature, alpha=alpha, labels=labels,
                                    ignore_index=ignore_index)
    return KDInputs(s2, t2, float(temperature), a, y, ignore_index, tuple(s.shape))


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    s = inputs["s"]
    return [Expected("loss", (), wide_dtype(s.dtype), s.device), Expected.like("ds", s)]


def min_bytes(N: int, V: int, itemsize: int) -> int:
    """Read ``s`` and ``t`` once, write ``ds`` once: ``3·N·V·itemsize`` (the scalar loss is negligible)."""
    return 3 * N * V * itemsize


# ------------------------------------------------------------------------------------------------
# Oracle


def materialised(s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float = 1.0,
                 labels: torch.Tensor | None = None, ignore_index: int = -100, compute: torch.dtype = torch.float64,
                 naive: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """KD-1 loss and its gradient w.r.t. ``s``, unfused, in ``compute`` dtype, by autograd.

    ``loss = mean over rows with label != ignore_index of α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)``;
    with no labels every row counts and α = 1; no counted row gives loss 0. ``naive=False`` spells out
    ``Σ p_t (log p_t - log p_s)``; ``naive=True`` is ``F.kl_div(..., log_target=True)`` and
    ``F.cross_entropy``: the same function, rounded differently.
    """
    V = s.shape[-1]
    sc = s.detach().reshape(-1, V).to(compute).requires_grad_()
    tc = t.detach().reshape(-1, V).to(compute)
    T = float(temperature)
    with torch.enable_grad():
        log_ps = F.log_softmax(sc / T, dim=-1)
        log_pt = F.log_softmax(tc / T, dim=-1)
        if naive:
            kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(dim=-1)
        else:
            kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)
        if labels is None:
            rows, valid = T * T * kl, torch.ones(sc.shape[0], dtype=torch.bool, device=sc.device)
        else:
            y = labels.reshape(-1).to(sc.device)
            valid = y != ignore_index
            if naive:
                ce = F.cross_entropy(sc, torch.where(valid, y, 0), reduction="none")
            else:
                ce = -F.log_softmax(sc, dim=-1).gather(1, torch.where(valid, y, 0)[:, None])[:, 0]
            rows = alpha * T * T * kl + (1.0 - alpha) * ce
        loss = torch.where(valid, rows, torch.zeros_like(rows)).sum() / max(int(valid.sum()), 1)
        (ds,) = torch.autograd.grad(loss, sc)
    return loss.detach(), ds.reshape(s.shape)


def oracle(s: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ds)`` in float64 on the CPU (keywords: ``temperature, alpha, labels, ignore_index``)."""
    return materialised(s.cpu(), t.cpu(), **kwargs, compute=torch.float64)


def naive(s: torch.Tensor, t: torch.Tensor, *, dtype: torch.dtype, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ds)`` as users write it, in ``dtype`` on the inputs' device."""
    return materialised(s, t, **kwargs, compute=dtype, naive=True)


# ------------------------------------------------------------------------------------------------
# Benchmark

#: the temperature of every KD workload (alpha = 1, no labels: the pure distillation term)
TEMPERATURE = 2.0
#: (device, quick) -> (N, V, dtype) of the table
TABLE: dict[tuple[str, bool], list[tuple[int, int, torch.dtype]]] = {
    ("cuda", False): [(8192, V, dt) for dt in (torch.float32, torch.bfloat16) for V in (32768, 131072)],
    ("cuda", True): [(8192, 32768, torch.float32)],
    ("cpu", False): [(256, 4096, torch.float32), (256, 32768, torch.float32)],
    ("cpu", True): [(64, 4096, torch.float32)],
}
#: rows of the gradient the gate compares at each end
GATE_GRAD_ROWS = 8


def _reference(w: RowsWorkload, inputs: dict[str, torch.Tensor]) -> dict[str, Reference]:
    """The float64 loss over every row, a chunk at a time (chunk means weighted by chunk size), and ``ds`` of
    the first and last GATE_GRAD_ROWS rows (a chunk's ``ds`` of its mean is ``ds`` of the full mean times
    ``rows / chunk rows``)."""
    s, t = inputs["s"], inputs["t"]
    rows = s.shape[0]
    grad_rows = sorted(set(range(min(GATE_GRAD_ROWS, rows))) | set(range(max(rows - GATE_GRAD_ROWS, 0), rows)))
    loss, ds_rows = 0.0, {}
    for c in row_slices(*s.shape):
        chunk_loss, chunk_ds = oracle(s[c], t[c], temperature=TEMPERATURE)
        n = c.stop - c.start
        loss += float(chunk_loss) * n / rows
        ds_rows |= {r: chunk_ds[r - c.start] * n / rows for r in grad_rows if c.start <= r < c.stop}
    return {"loss": Reference(None, torch.tensor(loss, dtype=torch.float64)),
            "ds": Reference((grad_rows,), torch.stack([ds_rows[r] for r in grad_rows]))}


def _bind(backend: Any, w: RowsWorkload, inputs: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    s, t = inputs["s"], inputs["t"]
    return lambda: backend.kd_loss(s, t, temperature=TEMPERATURE)


BENCH: BenchOp[RowsWorkload] = BenchOp(
    name="kd_loss", asv_class="KDLoss", calls=("kd_loss",), outputs=("loss", "ds"),
    table=lambda bench, device, quick: [RowsWorkload(bench, r, c, dt) for r, c, dt in TABLE[(device, quick)]],
    label=lambda w: f"N{w.rows}-V{w.cols}",
    describe=lambda w: {"N": w.rows, "V": w.cols, "temperature": TEMPERATURE, "min_bytes": w.min_bytes},
    inputs=lambda w, g, device: {"s": normal(g, (w.rows, w.cols), w.dtype, device),
                                 "t": normal(g, (w.rows, w.cols), w.dtype, device)},
    bind=_bind, reference=_reference,
    baselines=(Baseline("cuda", "torch-compile", vendor=True, yardstick=lambda: TorchCompileKD()),
               Baseline("cpu", "torch", vendor=True)),
    min_bytes=lambda w: min_bytes(w.rows, w.cols, w.itemsize))


SPEC: OpSpec[KDInputs] = OpSpec(
    name="kd_loss", signature="kd_loss(s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100) -> (loss, ds)",
    inputs=("s", "t"), outputs=("loss", "ds"), declared_dtypes=lambda caps: caps.kd_dtypes, validate=check,
    expected=expected, oracle=oracle, naive=naive, multipliers={"loss": 2.0, "ds": 3.0}, benchmarks=(BENCH,),
)


def kd_formula(s: torch.Tensor, t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The KD term of SPEC KD-1/KD-2 in float32 (alpha = 1, no labels), as the baseline compiles it:
    ``loss = T²·mean_rows KL(softmax(t/T) ‖ softmax(s/T))``, ``ds = T·(softmax(s/T) - softmax(t/T)) / N``."""
    T = temperature
    log_ps = F.log_softmax(s.float() / T, dim=-1)
    log_pt = F.log_softmax(t.float() / T, dim=-1)
    pt = log_pt.exp()
    loss = T * T * (pt * (log_pt - log_ps)).sum(dim=-1).mean()
    ds = (T * (log_ps.exp() - pt) / s.shape[0]).to(s.dtype)
    return loss, ds


class TorchCompileKD(Backend):
    """The GPU baseline: ``torch.compile(kd_formula)``, what a user gets from the compiler without writing a
    kernel."""

    name = "torch-compile"
    description = "baseline: torch.compile of the unfused KD formula"
    capabilities = Capabilities(devices=("cuda",), dtypes=(), kd_dtypes=(torch.float32, torch.bfloat16,
                                                                        torch.float16))

    @functools.cached_property
    def _compiled(self) -> Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]:
        """``torch.compile(kd_formula)``, made on first use: importing the compiler takes seconds, which every
        process that lists the baselines (each asv benchmark process among them) would otherwise pay."""
        return torch.compile(kd_formula)

    @SPEC.implementation
    def kd_loss(self, inp: KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inp.labels is not None:
            raise InvalidInputError("the torch-compile baseline computes the pure KD term only (no labels)")
        loss, ds = self._compiled(inp.s, inp.t, inp.temperature)
        return loss, ds.reshape(inp.shape)
