"""``softmax_stats(x, *, block=None) -> (m, l)`` (SPEC SMX-1).

``x [N, L]``; ``m [N]`` the row max (exactly), ``l [N] = Σ exp(x - m)``, float32 (float64 for float64
input), computed over blocks of ``block`` elements (None: the backend's own). A row of -inf gives (-inf, 0).

Cost: the fewest bytes are reading ``x`` once and writing ``m`` and ``l``: ``N·L·itemsize + 8·N``.

Oracle: the one-shot statistics in float64 on the CPU; naive: the same in dtype ``t``. Benchmark: ``x``
standard normal, against ``torch-eager`` (``amax`` then ``sum(exp)`` in eager torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from implementations import validate
from implementations.base import Backend, Capabilities, wide_dtype
from implementations.ops.spec import Expected, OpSpec
from implementations.ops.workload import Baseline, BenchOp, Reference, RowsWorkload, normal, row_slices

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class StatsInputs:
    """A validated statistics call."""

    x: torch.Tensor
    block: int | None = None


def check(caps: Capabilities, x: torch.Tensor, *, block: int | None = None) -> StatsInputs:
    """The boundary check (validate.rows_arg)."""
    return StatsInputs(validate.rows_arg(caps, "softmax_stats", x), block)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    x = inputs["x"]
    return [Expected(name, tuple(x.shape[:-1]), wide_dtype(x.dtype), x.device) for name in ("m", "l")]


def min_bytes(rows: int, cols: int, itemsize: int) -> int:
    """Read ``x [rows, cols]`` once and write ``m`` and ``l`` (float32, 4 bytes each per row)."""
    return rows * cols * itemsize + 2 * 4 * rows


def naive(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One-shot row statistics in ``dtype``: ``m = max x``, ``l = sum exp(x - m)``; a row of -inf gives
    (-inf, 0)."""
    xc = x.to(dtype)
    m = xc.amax(dim=-1)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    l = torch.exp(xc - shift[..., None]).sum(dim=-1)
    return m, l


def oracle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-shot statistics in float64, on the CPU."""
    return naive(x.cpu(), torch.float64)


# ------------------------------------------------------------------------------------------------
# Benchmark

#: (device, quick) -> (rows, cols, dtype) of the table
TABLE: dict[tuple[str, bool], list[tuple[int, int, torch.dtype]]] = {
    ("cuda", False): [(8192, L, dt) for dt in (torch.float32, torch.bfloat16) for L in (32768, 131072)],
    ("cuda", True): [(8192, 32768, torch.float32)],
    ("cpu", False): [(256, 4096, torch.float32), (256, 32768, torch.float32)],
    ("cpu", True): [(64, 4096, torch.float32)],
}


def _reference(w: RowsWorkload, inputs: dict[str, torch.Tensor]) -> dict[str, Reference]:
    """The float64 statistics of every row, a chunk of rows at a time."""
    x = inputs["x"]
    stats = [oracle(x[c]) for c in row_slices(*x.shape)]
    return {"m": Reference(None, torch.cat([m for m, _ in stats])),
            "l": Reference(None, torch.cat([l for _, l in stats]))}


def _bind(backend: Any, w: RowsWorkload, inputs: dict[str, torch.Tensor]) -> Callable[[], tuple]:
    x = inputs["x"]
    return lambda: backend.softmax_stats(x)


BENCH: BenchOp[RowsWorkload] = BenchOp(
    name="softmax_stats", asv_class="SoftmaxStats", calls=("softmax_stats",), outputs=("m", "l"),
    table=lambda bench, device, quick: [RowsWorkload(bench, r, c, dt) for r, c, dt in TABLE[(device, quick)]],
    label=lambda w: f"{w.rows}x{w.cols}",
    describe=lambda w: {"rows": w.rows, "cols": w.cols, "min_bytes": w.min_bytes},
    inputs=lambda w, g, device: {"x": normal(g, (w.rows, w.cols), w.dtype, device)},
    bind=_bind, reference=_reference,
    baselines=tuple(Baseline(device, "torch-eager", vendor=True, yardstick=lambda: TorchEagerStats())
                    for device in ("cuda", "cpu")),
    min_bytes=lambda w: min_bytes(w.rows, w.cols, w.itemsize))


SPEC: OpSpec[StatsInputs] = OpSpec(
    name="softmax_stats", signature="softmax_stats(x, *, block=None) -> (m, l)", inputs=("x",), outputs=("m", "l"),
    declared_dtypes=lambda caps: caps.stats_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"m": 2.0, "l": 2.0, "lse_stats": 2.0}, benchmarks=(BENCH,),
)


class TorchEagerStats(Backend):
    """The baseline: softmax statistics in two eager torch reductions, ``m = amax(x)``, ``l = sum(exp(x - m))``."""

    name = "torch-eager"
    description = "baseline: eager torch amax + sum(exp)"
    capabilities = Capabilities(devices=("cpu", "cuda"), dtypes=(), stats_dtypes=FLOAT_DTYPES)

    @SPEC.implementation
    def softmax_stats(self, inp: StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        xf = inp.x.float()
        m = xf.amax(dim=-1)
        return m, torch.exp(xf - m[:, None]).sum(dim=-1)
