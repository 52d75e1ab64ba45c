"""``kd_loss(s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100) -> (loss, ds)`` (SPEC KD).

Student ``s`` and teacher ``t`` logits ``[N, V]`` (or ``[..., V]``, flattened to rows), temperature T > 0,
integer ``labels`` of the leading shape. ``loss`` (0-dim, float32; float64 for float64 logits) is the mean
over rows whose label is not ``ignore_index`` of ``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)``;
without labels every row counts and α is 1. ``ds = d loss / d s``, shaped and typed like ``s``.

Cost: the fewest bytes are reading ``s`` and ``t`` once and writing ``ds`` once: ``3·N·V·itemsize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, wide_dtype
from implementations.ops.spec import Expected, OpSpec


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


SPEC: OpSpec[KDInputs] = OpSpec(
    name="kd_loss",
    signature="kd_loss(s, t, *, temperature, alpha=1.0, labels=None, ignore_index=-100) -> (loss, ds)",
    inputs=("s", "t"),
    outputs=("loss", "ds"),
    declared_dtypes=lambda caps: caps.kd_dtypes,
    validate=check,
    expected=expected,
)
