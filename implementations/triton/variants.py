"""The attention variants as the Triton kernels take them: a visibility band, logit softcap and ALiBi.

Visibility (SPEC ATT-3 and the window clause): key ``j`` is visible to query ``i`` iff ``j < Sk`` and

    i + lo_off <= j             (window left bound ``left >= 0``: lo_off = Sk - Sq - left)
    j <= i + hi_off             (causal: off = 0 top-left or Sk - Sq bottom-right; window right bound
                                 ``right >= 0``: Sk - Sq + right; both given: the smaller)

so every mask is one band around the diagonal, computed per sequence in the kernel (:func:`band`), and the key
blocks of a query block split into masked edges and an unmasked middle (:func:`key_blocks`; the backward's
query blocks of a key block likewise, :func:`query_blocks`). Blocks outside the band are never visited.

Logits (:func:`logits`), in base 2 as the kernels keep them: ``s = scale * q.k``; with a softcap
``s <- cap * tanh(s / cap)``; with ALiBi ``s -= slope_h * |i + Sk - Sq - j|``; then ``s * log2(e)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import triton
import triton.language as tl

from .common import LOG2E, LOG2E_K


@dataclass(frozen=True)
class KernelVariants:
    """The variants of one attention call (the interface of SPEC's variant clauses).

    ``causal``: None, ``"top_left"`` or ``"bottom_right"``; ``window``: ``(left, right)``, -1 unbounded;
    ``softcap``: the cap (> 0) or None; ``alibi_slopes``: float32 ``[Hq]`` or None.
    """

    causal: str | None = None
    window: tuple[int, int] | None = None
    softcap: float | None = None
    alibi_slopes: torch.Tensor | None = None

    def bounds(self) -> tuple[int, int]:
        """``(left, right)`` of the window, -1 where unbounded (both -1 without a window)."""
        return self.window if self.window is not None else (-1, -1)

    def scalars(self, scale: float) -> tuple[float, float, int, int]:
        """Kernel scalars ``(cap_in, cap_out, left, right)``: the softcap as ``cap_out * tanh(raw * cap_in)``
        in base 2 (``cap_in = scale / cap``, ``cap_out = cap * log2(e)``; ones without a softcap)."""
        cap_in, cap_out = (scale / self.softcap, self.softcap * LOG2E) if self.softcap else (1.0, 1.0)
        return (cap_in, cap_out, *self.bounds())

    def flags(self) -> dict[str, bool]:
        """The kernels' compile-time switches for these variants."""
        left, right = self.bounds()
        return dict(CAUSAL=self.causal is not None, BOTTOM_RIGHT=self.causal == "bottom_right",
                    WIN_LO=left >= 0, WIN_HI=right >= 0, SOFTCAP=self.softcap is not None,
                    ALIBI=self.alibi_slopes is not None)

    def slopes(self, device: torch.device) -> torch.Tensor:
        """The ALiBi slopes as a contiguous float32 tensor (a one-element placeholder without ALiBi)."""
        if self.alibi_slopes is None:
            return torch.zeros(1, dtype=torch.float32, device=device)
        return self.alibi_slopes.to(device=device, dtype=torch.float32).contiguous()

    def plain(self) -> bool:
        """True without window, softcap and ALiBi (the kernels' fastest path)."""
        return self.window is None and self.softcap is None and self.alibi_slopes is None


@triton.jit
def band(Sq, Sk, win_left, win_right,
         CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WIN_LO: tl.constexpr, WIN_HI: tl.constexpr):
    """``(lo_off, hi_off)``: key j visible to query i iff ``i + lo_off <= j`` (when ``WIN_LO``) and
    ``j <= i + hi_off`` (when ``CAUSAL or WIN_HI``)."""
    shift = Sk - Sq
    lo_off = shift - win_left
    if CAUSAL:
        if BOTTOM_RIGHT:
            hi_off = shift
        else:
            hi_off = shift * 0
        if WIN_HI:
            hi_off = tl.minimum(hi_off, shift + win_right)
    else:
        hi_off = shift + win_right
    return lo_off, hi_off


@triton.jit
def _clamp(x, lo, hi):
    return tl.minimum(tl.maximum(x, lo), hi)


@triton.jit
def key_blocks(m0, Sk, lo_off, hi_off,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """``(a, b, c, d)`` for the query rows ``[m0, m0 + BLOCK_M)``: key blocks ``[a, b)`` and ``[c, d)`` need
    masks, ``[b, c)`` are seen completely by every row; keys outside ``[a, d)`` are seen by none."""
    if HAS_HI:
        d = _clamp(m0 + BLOCK_M + hi_off, 0, Sk)
        full_hi = _clamp(m0 + hi_off + 1, 0, Sk)
    else:
        d = Sk
        full_hi = Sk
    if HAS_LO:
        a = (_clamp(m0 + lo_off, 0, Sk) // BLOCK_N) * BLOCK_N
        full_lo = tl.cdiv(_clamp(m0 + BLOCK_M - 1 + lo_off, 0, Sk), BLOCK_N) * BLOCK_N
    else:
        a = 0
        full_lo = 0
    b = tl.maximum(a, full_lo)
    c = tl.maximum(b, (full_hi // BLOCK_N) * BLOCK_N)
    return a, tl.minimum(b, d), b, c, d


@triton.jit
def query_blocks(n0, Sq, lo_off, hi_off,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """``(a, b_masked, b, c, d)`` for the keys ``[n0, n0 + BLOCK_N)``: query blocks ``[a, b_masked)`` and
    ``[c, d)`` need masks, ``[b, c)`` see every key of the block; queries outside ``[a, d)`` see none."""
    if HAS_HI:
        a = (_clamp(n0 - hi_off, 0, Sq) // BLOCK_M) * BLOCK_M
        full_lo = tl.cdiv(_clamp(n0 + BLOCK_N - 1 - hi_off, 0, Sq), BLOCK_M) * BLOCK_M
    else:
        a = 0
        full_lo = 0
    if HAS_LO:
        d = _clamp(n0 + BLOCK_N - lo_off, 0, Sq)
        full_hi = _clamp(n0 - lo_off + 1, 0, Sq)
    else:
        d = Sq
        full_hi = Sq
    b = tl.maximum(a, full_lo)
    c = tl.maximum(b, (full_hi // BLOCK_M) * BLOCK_M)
    return a, tl.minimum(b, d), b, c, d


@triton.jit
def visible(offs_m, offs_n, Sk, lo_off, hi_off, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """The ``[rows, keys]`` mask of visible pairs: ``j < Sk`` and inside the band."""
    vis = offs_n[None, :] < Sk
    if HAS_HI:
        vis = vis & (offs_n[None, :] <= offs_m[:, None] + hi_off)
    if HAS_LO:
        vis = vis & (offs_n[None, :] >= offs_m[:, None] + lo_off)
    return vis


@triton.jit
def tanh(x):
    """``tanh(x)`` within a few float32 ulps, on the GPU and the interpreter alike (which has no libdevice):
    its odd Taylor series to x^9 for ``|x| < 1/8`` (truncation below 2^-33 relative), else
    ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|) <= 0.78``, free of cancellation there."""
    ax = tl.abs(x)
    e = tl.exp2(ax * (-2.0 * LOG2E_K))
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(ax < 0.125, small, tl.where(x < 0, -big, big))


@triton.jit
def logits(s, offs_m, offs_n, shift, qk_scale, cap_in, cap_out, slope2,
           SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """Base-2 logits of raw products ``s = q.k`` and, for the backward, ``d logits / d (scale*q.k)``
    (``1 - tanh^2`` with a softcap, else the scalar 1). ``slope2`` = the head's ALiBi slope times log2(e)."""
    if SOFTCAP:
        t = tanh(s * cap_in)
        s2 = t * cap_out
        dcap = 1.0 - t * t
    else:
        s2 = s * qk_scale
        dcap = 1.0
    if ALIBI:
        dist = tl.abs(offs_m[:, None] + shift - offs_n[None, :]).to(tl.float32)
        s2 = s2 - slope2 * dist
    return s2, dcap


@triton.jit
def locate(pid_bh, Hq, GROUP, Sq, Sk, CU_Q, CU_K, VARLEN: tl.constexpr):
    """``(seq, h, hk, q_start, k_start, Sq, Sk)`` of program ``pid_bh`` over (batch or sequence) x query heads:
    the batch index (or sequence), query and KV head, and with ``VARLEN`` the sequence's first rows and its
    lengths read from the int32 prefix sums ``CU_Q``, ``CU_K`` (otherwise rows start at 0)."""
    seq = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    hk = (h // GROUP).to(tl.int64)
    if VARLEN:
        q_start = tl.load(CU_Q + seq)
        k_start = tl.load(CU_K + seq)
        Sq = tl.load(CU_Q + seq + 1) - q_start
        Sk = tl.load(CU_K + seq + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
    else:
        q_start = seq * 0
        k_start = seq * 0
    return seq, h.to(tl.int64), hk, q_start, k_start, Sq, Sk


@triton.jit
def visible_t(offs_n, offs_m, Sq, lo_off, hi_off, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """The transposed mask ``[keys, rows]`` of :func:`visible` for the backward's key-major tiles, with
    ``i < Sq`` (rows past the queries) in place of ``j < Sk``."""
    vis = offs_m[None, :] < Sq
    if HAS_HI:
        vis = vis & (offs_n[:, None] <= offs_m[None, :] + hi_off)
    if HAS_LO:
        vis = vis & (offs_n[:, None] >= offs_m[None, :] + lo_off)
    return vis
