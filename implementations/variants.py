"""The attention variants kernels ship (SPEC chapters VAR, VLEN, DEC, FP8): the record of a call's variant
arguments, the cases of the packed (varlen) and paged-decode operations, and the window rule backends use.

Variant arguments of ``attention``, ``attention_backward`` and the varlen operations (SPEC VAR):

- ``window = (left, right)``, -1 unbounded: key j is visible to query i iff
  ``i + Sk - Sq - left <= j <= i + Sk - Sq + right`` (bottom-right alignment, as FlashAttention), AND-ed with
  ``causal`` when both are given;
- ``softcap`` (> 0): ``s <- softcap · tanh(s / softcap)`` on the scaled logits ``s = scale · q·k``;
- ``bias`` broadcastable to ``[B, Hq, Sq, Sk]``, added after the softcap; a bool tensor is a mask
  (True = visible), a bias of 0 / -inf; not differentiated;
- ``alibi_slopes`` float32 ``[Hq]``: adds ``-slope_h · |i + Sk - Sq - j|`` after the softcap.

A backend declares the ones it supports in ``Capabilities.attention_variants``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

#: the variant names a backend may declare in ``Capabilities.attention_variants``
ATTENTION_VARIANTS: tuple[str, ...] = ("window", "softcap", "bias", "alibi")

#: how a case passes ``bias``: a float tensor broadcast from the named shape ([B, Hq, Sq, Sk], [Hq, Sq, Sk],
#: [Sq, Sk], [B, 1, Sq, Sk]), or a boolean mask [B, 1, Sq, Sk] (True = visible)
BiasKind = Literal["BHqk", "Hqk", "qk", "B1qk", "mask"]


@dataclass(frozen=True)
class Variants:
    """The validated variant arguments of one call (all None: plain attention)."""

    window: tuple[int, int] | None = None
    softcap: float | None = None
    bias: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None

    @property
    def names(self) -> frozenset[str]:
        """The variants this call uses, named as ``Capabilities.attention_variants`` names them."""
        used = {"window": self.window is not None, "softcap": self.softcap is not None,
                "bias": self.bias is not None, "alibi": self.alibi_slopes is not None}
        return frozenset(name for name, on in used.items() if on)


#: no variant: plain attention
PLAIN = Variants()


def window_key_range(rows: np.ndarray, Sq: int, Sk: int, causal_offset: int | None,
                     window: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The visible keys of each query row as an inclusive range ``[lo, hi]`` (``lo > hi``: none visible).

    Window: ``i + Sk - Sq - left <= j <= i + Sk - Sq + right`` (-1 unbounded); causal: ``j <= i + offset``.
    Both bounds are clipped to ``[0, Sk - 1]``.
    """
    lo = np.zeros_like(rows)
    hi = np.full_like(rows, Sk - 1)
    if window is not None:
        left, right = window
        if left >= 0:
            lo = np.maximum(lo, rows + Sk - Sq - left)
        if right >= 0:
            hi = np.minimum(hi, rows + Sk - Sq + right)
    if causal_offset is not None:
        hi = np.minimum(hi, rows + causal_offset)
    return lo, hi


@dataclass(frozen=True)
class VarlenCase:
    """One packed batch of ``attention_varlen``: per-sequence query and key lengths (zero allowed)."""

    seqlens_q: tuple[int, ...]
    seqlens_k: tuple[int, ...]
    Hq: int
    Hk: int
    D: int
    dtype: torch.dtype
    device: str
    causal: Literal["top_left", "bottom_right"] | None = None
    window: tuple[int, int] | None = None
    softcap: float | None = None

    @property
    def variants(self) -> frozenset[str]:
        return frozenset(n for n, on in (("window", self.window), ("softcap", self.softcap)) if on is not None)

    @property
    def label(self) -> str:
        """e.g. ``N3-q5.0.17-k9.0.17-H4k2-D64-causal_br-w8.0``."""
        heads = f"H{self.Hq}" if self.Hk == self.Hq else f"H{self.Hq}k{self.Hk}"
        causal = {None: "", "top_left": "-causal_tl", "bottom_right": "-causal_br"}[self.causal]
        window = f"-w{self.window[0]}.{self.window[1]}" if self.window else ""
        cap = f"-cap{self.softcap:g}" if self.softcap else ""
        q = ".".join(map(str, self.seqlens_q))
        k = ".".join(map(str, self.seqlens_k))
        return f"N{len(self.seqlens_q)}-q{q}-k{k}-{heads}-D{self.D}{causal}{window}{cap}"


@dataclass(frozen=True)
class DecodeCase:
    """One paged-KV decode step: ``Sq`` new queries per sequence over ``kv_lens`` keys in pages."""

    kv_lens: tuple[int, ...]
    Hq: int
    Hk: int
    Sq: int
    D: int
    page_size: int
    dtype: torch.dtype
    device: str
    num_splits: int | None = None

    @property
    def B(self) -> int:
        return len(self.kv_lens)

    @property
    def label(self) -> str:
        """e.g. ``B3-kv17.64.300-H8k2-q1-D64-page16-split4``."""
        heads = f"H{self.Hq}" if self.Hk == self.Hq else f"H{self.Hq}k{self.Hk}"
        kv = ".".join(map(str, self.kv_lens))
        split = f"-split{self.num_splits}" if self.num_splits else ""
        return f"B{self.B}-kv{kv}-{heads}-q{self.Sq}-D{self.D}-page{self.page_size}{split}"
