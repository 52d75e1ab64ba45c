"""The tolerance rule of SPEC.md.

``err(x) = max|x - oracle|``; a backend's output in dtype ``t`` passes when
``err(backend) <= mult * err(naive_t) + atol_floor(t, |oracle|)``. Multipliers: out 2, lse 2, dq/dk/dv 3;
this suite also uses 2 for other values (softmax statistics, KD loss) and 3 for other gradients (KD ds).
NaN or Inf where the oracle is finite always fails; where the oracle is ±inf the output must equal it.
The ratio ``err(backend) / err(naive_t)`` is the backend's precision score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MULTIPLIERS: dict[str, float] = {"out": 2.0, "lse": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0,
                                 "m": 2.0, "l": 2.0, "lse_stats": 2.0, "loss": 2.0, "ds": 3.0, "delta": 2.0}
#: ulps of the output dtype, at the oracle's magnitude, always allowed
FLOOR_ULPS = 4


def max_abs_err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    """``max|x - oracle|`` in float64; inf where x is NaN/Inf but the oracle is finite, or infinities differ."""
    xd = x.detach().to("cpu", torch.float64)
    od = oracle.detach().to("cpu", torch.float64)
    if xd.shape != od.shape:
        raise AssertionError(f"shape {tuple(xd.shape)} differs from the oracle's {tuple(od.shape)}")
    if xd.numel() == 0:
        return 0.0
    finite = torch.isfinite(od)
    if bool(torch.isnan(xd).any()):
        return math.inf
    if not bool((xd[~finite] == od[~finite]).all()):
        return math.inf
    if not bool(torch.isfinite(xd[finite]).all()):
        return math.inf
    return float((xd[finite] - od[finite]).abs().max()) if bool(finite.any()) else 0.0


def atol_floor(dtype: torch.dtype, oracle: torch.Tensor, terms: int = 1, magnitude: float | None = None) -> float:
    """The rounding noise of ``dtype`` at the oracle's magnitude ``M``.

    ``M · (FLOOR_ULPS · eps(dtype) + sqrt(terms) · eps(accumulator))``: a few ulps of the output dtype for
    its final rounding, plus the random-walk noise of a ``terms``-long sum in the accumulator (float64 for
    float64 data, float32 otherwise). It matters where the naive implementation is exact (float64 on the
    CPU, where naive_t is the oracle itself); elsewhere the naive error dominates. ``magnitude`` overrides
    ``M`` where an output is exactly 0 by cancellation of larger terms (dq when every row sees one key).
    """
    if magnitude is None:
        od = oracle.detach().to("cpu", torch.float64)
        finite = od[torch.isfinite(od)]
        magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    accumulator = torch.float64 if dtype == torch.float64 else torch.float32
    return magnitude * (FLOOR_ULPS * torch.finfo(dtype).eps + math.sqrt(max(terms, 1)) * torch.finfo(accumulator).eps)


@dataclass
class Comparison:
    """One output checked by the rule: its error, the naive error, the bound and the verdict."""

    name: str
    err: float
    ref_err: float
    mult: float
    floor: float

    @property
    def bound(self) -> float:
        return self.mult * self.ref_err + self.floor

    @property
    def passed(self) -> bool:
        return self.err <= self.bound

    @property
    def ratio(self) -> float | None:
        """The precision score ``err / ref_err`` (None when the naive implementation is exact)."""
        if self.ref_err > 0 and math.isfinite(self.err):
            return self.err / self.ref_err
        return None if self.ref_err == 0 and self.err == 0 else (math.inf if self.ref_err == 0 else None)

    def describe(self) -> str:
        verdict = "<=" if self.passed else ">"
        return (f"{self.name}: err {self.err:.3e} {verdict} {self.mult:g} x naive {self.ref_err:.3e} "
                f"+ floor {self.floor:.3e} = {self.bound:.3e}")


def compare(name: str, x: torch.Tensor, oracle: torch.Tensor, naive: torch.Tensor | None,
            dtype: torch.dtype | None = None, mult: float | None = None, terms: int = 1,
            magnitude: float | None = None) -> Comparison:
    """Apply the rule to output ``name`` (``naive`` None means the naive error is taken as 0).

    ``terms`` is the length of the longest sum behind one output element (Sk for attention outputs).
    """
    return Comparison(
        name=name,
        err=max_abs_err(x, oracle),
        ref_err=max_abs_err(naive, oracle) if naive is not None else 0.0,
        mult=MULTIPLIERS.get(name, 2.0) if mult is None else mult,
        floor=atol_floor(dtype or x.dtype, oracle, terms, magnitude),
    )
