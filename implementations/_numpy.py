"""Helpers shared by the NumPy backends (``reference`` and ``reference-tiled``), kept in one place.

- torch <-> NumPy: :func:`as_numpy` (conversion done by torch, which knows bfloat16; NumPy does not) and
  :func:`write` (results copied into outputs allocated with ``new_output``, rounded by torch);
- the causal visibility rule of SPEC ATT-3 (offsets from ``base.causal_offset``): :func:`visible`;
- the -inf-safe pieces of the (online) softmax, ATT-4 / SMX-2 / SMX-5: :func:`finite_or_zero`,
  :func:`log_or_neg_inf`, :func:`merge_stats`; the statistics as outputs: :func:`stats_outputs`.
"""

from __future__ import annotations

import numpy as np
import torch

from implementations.base import new_output


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch dtype NumPy has (every dtype but bfloat16)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def as_numpy(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``x`` converted to ``dtype`` as a NumPy array; shares memory (no copy) when ``x`` already has it."""
    return x.detach().to(dtype).numpy()


def write(dst: torch.Tensor, src: np.ndarray) -> None:
    """Copy ``src`` into ``dst`` (an output or a slice of one), rounding to ``dst``'s dtype as torch does."""
    dst.copy_(torch.from_numpy(src))



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


def stats_outputs(m: np.ndarray, l: np.ndarray, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax statistics ``(m, l)`` (SMX-1, SMX-2) copied into two new outputs of ``dtype`` on ``device``."""
    m_out = new_output(m.shape, dtype, device)
    l_out = new_output(l.shape, dtype, device)
    write(m_out, m)
    write(l_out, l)
    return m_out, l_out
