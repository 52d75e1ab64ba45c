"""Helpers shared by the NumPy backends (``reference`` and ``reference-tiled``), kept in one place.

- torch <-> NumPy: :func:`as_numpy` (conversion done by torch, which knows bfloat16; NumPy does not) and
  :func:`write` (results copied into outputs allocated with ``new_output``, rounded by torch);
- the causal visibility rule of SPEC ATT-3: :func:`causal_offset`, :func:`visible`;
- the -inf-safe pieces of the (online) softmax, ATT-4 / SMX-2 / SMX-5: :func:`finite_or_zero`,
  :func:`log_or_neg_inf`, :func:`merge_stats`;
- the boundary checks of the two operations :mod:`implementations.validate` has none for:
  :func:`merge_args`, :func:`delta_args`.
"""

from __future__ import annotations

import numpy as np
import torch

from implementations.base import Capabilities, CausalVariant
from implementations.validate import _check_device, _check_dtype, _check_tensor, _require


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise.

    The dtype of ``lse``, softmax statistics and ``delta`` (contract), and the dtype the tiled backend
    computes in (float32 accumulation for float16 / bfloat16 / float32, as on tensor cores).
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch dtype NumPy has (every dtype but bfloat16)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def as_numpy(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``x`` converted to ``dtype`` as a NumPy array; shares memory (no copy) when ``x`` already has it."""
    return x.detach().to(dtype).numpy()


def write(dst: torch.Tensor, src: np.ndarray) -> None:
    """Copy ``src`` into ``dst`` (an output or a slice of one), rounding to ``dst``'s dtype as torch does."""
    dst.copy_(torch.from_numpy(src))


def causal_offset(causal: CausalVariant | None, Sq: int, Sk: int) -> int | None:
    """The ``offset`` of ATT-3: key ``j`` is visible to query ``i`` iff ``j <= i + offset``.

    Top-left: ``offset = 0``; bottom-right: ``offset = Sk - Sq``; ``None`` when not causal (all visible).
    """
    if causal is None:
        return None
    return 0 if causal == "top_left" else Sk - Sq


def visible(rows: np.ndarray, cols: np.ndarray, offset: int) -> np.ndarray:
    """Boolean ``[len(rows), len(cols)]``: is key ``cols[c]`` visible to query ``rows[r]`` (ATT-3)."""
    return cols[None, :] <= rows[:, None] + offset


def finite_or_zero(m: np.ndarray) -> np.ndarray:
    """The point to subtract before ``exp``: the row max ``m``, or 0 where ``m = -inf``.

    A row with no finite entry (fully masked, ATT-4; a row of -inf, SMX-5) then gives
    ``exp(-inf - 0) = 0`` rather than ``exp(-inf + inf) = NaN``.
    """
    return np.where(np.isneginf(m), np.zeros_like(m), m)


def log_or_neg_inf(l: np.ndarray) -> np.ndarray:
    """``log l`` with ``log 0 = -inf`` and no warning (the lse of a fully masked row, ATT-4)."""
    return np.log(l, out=np.full_like(l, -np.inf), where=l > 0)


def merge_stats(m1: np.ndarray, l1: np.ndarray, m2: np.ndarray, l2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SMX-2: ``(m1,l1) ⊕ (m2,l2) = (m, l1·e^(m1-m) + l2·e^(m2-m))`` with ``m = max(m1, m2)``.

    The identity ``(-inf, 0)`` merges to itself without NaN (:func:`finite_or_zero`).
    """
    m = np.maximum(m1, m2)
    ref = finite_or_zero(m)
    return m, l1 * np.exp(m1 - ref) + l2 * np.exp(m2 - ref)


def merge_args(caps: Capabilities, m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor, l2: torch.Tensor) -> None:
    """Boundary check of ``softmax_merge``: four tensors of one shape, dtype and device (SPEC ATT-11 style)."""
    tensors = {"m1": m1, "l1": l1, "m2": m2, "l2": l2}
    for n, x in tensors.items():
        _require(isinstance(x, torch.Tensor), f"{n} must be a torch.Tensor, got {type(x).__name__}")
    for n, x in tensors.items():
        _require(x.shape == m1.shape, f"shape mismatch: {n} is {tuple(x.shape)} but m1 is {tuple(m1.shape)}")
    _check_device(caps, tensors)
    _check_dtype("softmax_merge", caps.stats_dtypes, tensors)


def delta_args(caps: Capabilities, out: torch.Tensor, dout: torch.Tensor) -> None:
    """Boundary check of ``attention_delta``: ``out`` and ``dout`` both ``[B, Hq, Sq, D]``, same dtype and device."""
    _check_tensor("out", out, 4)
    _check_tensor("dout", dout, 4)
    _require(out.shape == dout.shape, f"shape mismatch: out {tuple(out.shape)} vs dout {tuple(dout.shape)}")
    _check_device(caps, {"out": out, "dout": dout})
    _check_dtype("attention_delta", caps.backward_dtypes, {"out": out, "dout": dout})
