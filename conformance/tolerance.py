"""The tolerance rule of SPEC.md.

``err(x) = max|x - oracle|``; a backend's output in dtype ``t`` passes when
``err(backend) <= mult * err(naive_t) + atol_floor(t, |oracle|)``. Multipliers: out 2, lse 2, dq/dk/dv 3;
this suite also uses 2 for other values (softmax statistics, KD loss) and 3 for other gradients (KD ds).
Each operation states the multipliers of the values its clauses compare (``OpSpec.multipliers``).
NaN or Inf where the oracle is finite always fails; where the oracle is ±inf the output must equal it.
The ratio ``err(backend) / err(naive_t)`` is the backend's precision score.

The floor (:func:`atol_floor`) is the sum of three rounding terms, each the size of what a correct kernel
in dtype ``t`` cannot avoid: the output's own final rounding, the noise of the sums behind it, and the
rounding of inputs it amplifies (the logits of a softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from implementations.ops import OPS


def operation_multipliers() -> dict[str, float]:
    """The multiplier of every compared value, from the operations (``OpSpec.multipliers``); a name two
    operations compare (``m``, ``l``) must have one multiplier (ValueError otherwise)."""
    table: dict[str, float] = {}
    for spec in OPS.values():
        for name, mult in spec.multipliers.items():
            if table.setdefault(name, mult) != mult:
                raise ValueError(f"{spec.name} gives {name!r} the multiplier {mult}, another operation {table[name]}")
    return table


#: the multiplier of each compared value by name
MULTIPLIERS: dict[str, float] = operation_multipliers()
#: ulps of the output dtype, at the oracle's magnitude, always allowed where the accumulator is the output
#: dtype (float32, float64): there the naive error can be 0 or a few ulps, and a correct kernel that sums in
#: another order differs from the oracle by a few ulps of its own
FLOOR_ULPS = 4
#: ulps allowed in float16 / bfloat16: the naive implementation rounds every output to ``t`` too, so
#: ``mult·err(naive)`` already holds the final rounding; the floor only covers a naive that rounds the
#: largest outputs luckily: one ulp, twice the most a final rounding costs. Four ulps (3% of M in bfloat16)
#: admitted an accumulator held in bfloat16 across key tiles (error 4-8x the naive one at Sk = 8192).
LOW_PRECISION_FLOOR_ULPS = 1
LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def floor_ulps(dtype: torch.dtype) -> int:
    """Ulps of ``dtype`` at the oracle's magnitude that the floor allows for an output's final rounding."""
    return LOW_PRECISION_FLOOR_ULPS if dtype in LOW_PRECISION else FLOOR_ULPS


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """What a correct kernel sums in: float64 for float64 data, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def atol_floor(dtype: torch.dtype, oracle: torch.Tensor, terms: int = 1, magnitude: float | None = None,
               summands: float | None = None, propagated: float = 0.0) -> float:
    """The rounding noise of a correct dtype-``dtype`` kernel, with ``M`` the oracle's largest magnitude:

    ``M·floor_ulps(dtype)·eps(dtype) + S·sqrt(terms)·eps(acc) + P·eps(acc)`` (``acc`` the accumulator):

    - the output's final rounding to ``dtype`` (:func:`floor_ulps`);
    - the random-walk noise of a ``terms``-long sum in the accumulator: each addition rounds a partial sum,
      and partial sums are bounded by ``S = summands``, the sum of the magnitudes of what is added (Σ|x|
      for a reduction, the condition of the sum); ``M`` where not given;
    - ``P = propagated``: inputs the kernel rounds to the accumulator before a step that amplifies them,
      weighted by that gain (for attention, the logits through the softmax: ``max|s|·max|v|`` for out).

    The floor matters where the naive implementation is nearly exact (float64 on the CPU); elsewhere the
    naive error dominates. ``magnitude`` overrides ``M`` where an output is exactly 0 by cancellation of
    larger terms (dq when every row sees one key; the KD loss at ``s = t + c``).
    """
    if magnitude is None:
        od = oracle.detach().to("cpu", torch.float64)
        finite = od[torch.isfinite(od)]
        magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    acc_eps = torch.finfo(accumulator(dtype)).eps
    noise = (magnitude if summands is None else summands) * math.sqrt(max(terms, 1)) * acc_eps
    return magnitude * floor_ulps(dtype) * torch.finfo(dtype).eps + noise + propagated * acc_eps


def max_abs_logit(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """``max |scale·q_i·k_j|`` over every query head and the KV head it reads (SPEC ATT-6), in float32 on the
    inputs' device, a block of query rows at a time (at most 2^26 scores per block)."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    rows = q.reshape(B, Hk, (Hq // Hk) * Sq, D).float()  # query head h reads KV head h // (Hq // Hk)
    keys = k.float().transpose(-1, -2)
    step = max(1, (1 << 26) // max(B * Hk * Sk, 1))
    largest = 0.0
    for r0 in range(0, rows.shape[2], step):
        largest = max(largest, float((rows[:, :, r0:r0 + step] @ keys).abs().max()))
    return abs(scale) * largest


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
            magnitude: float | None = None, summands: float | None = None, propagated: float = 0.0) -> Comparison:
    """Apply the rule to output ``name``, a value some operation lists in its multipliers (KeyError otherwise;
    ``mult`` overrides); ``naive`` None means the naive error is taken as 0.

    ``terms`` is the length of the longest sum behind one output element (Sk for attention outputs);
    ``magnitude``, ``summands`` and ``propagated`` are :func:`atol_floor`'s.
    """
    return Comparison(
        name=name,
        err=max_abs_err(x, oracle),
        ref_err=max_abs_err(naive, oracle) if naive is not None else 0.0,
        mult=MULTIPLIERS[name] if mult is None else mult,
        floor=atol_floor(dtype or x.dtype, oracle, terms, magnitude, summands, propagated),
    )
