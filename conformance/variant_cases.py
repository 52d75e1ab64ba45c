"""The cases of the variant chapters (SPEC VAR, VLEN, DEC, FP8), drawn from a backend's capabilities, and their
seeded inputs: the variant arguments of a dense case, packed batches, paged KV caches, fp8 tensors.

Quick runs keep a handful of small cases per clause (each is a few backend calls on at most a few hundred rows);
full runs add shapes, head dims and the other declared dtypes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch

from conformance import cases as casegen
from implementations.base import AttentionCase, BackendLike
from implementations.variants import DecodeCase, VarlenCase

#: (Sq, Sk, window, causal): the window's edges on tile boundaries (multiples of 16..128) and one off them,
#: Sq < Sk, Sq = Sk and Sq > Sk (rows with no visible key, ATT-4)
WINDOW_QUICK = ((128, 128, (64, 0), None), (77, 200, (63, -1), "bottom_right"), (200, 77, (32, 33), None),
                (96, 96, (0, 0), "top_left"))
WINDOW_FULL = WINDOW_QUICK + ((128, 128, (63, 1), "top_left"), (77, 300, (128, -1), "bottom_right"),
                              (77, 300, (-1, 31), None), (256, 256, (127, 128), None), (256, 256, (65, -1), "top_left"),
                              (1, 239, (16, -1), None), (239, 1, (0, 0), None), (513, 1023, (256, 255), None),
                              (64, 64, (-1, -1), "top_left"))
#: softcaps, from one that saturates most logits to one few reach
SOFTCAPS = (0.5, 5.0, 50.0)
#: what the softcap cases multiply q by, so that the largest logits pass the smallest cap many times over
SOFTCAP_Q_SCALE = 4.0
BIAS_KINDS = ("BHqk", "Hqk", "qk", "B1qk", "mask")
#: cases per clause an emulated backend (the Triton interpreter) meets in a quick run of these chapters: a
#: paged decode case alone takes 10-30 s there (36 cases at two per clause: 141 s of case time, CPU)
EMULATED_QUICK = 1


def lean(make: Callable[..., list]) -> Callable[..., list]:
    """A case generator that gives an emulated backend at most EMULATED_QUICK cases (spread from the first to
    the last) in a quick run, ``--every-case`` or not; without ``--quick`` it meets the usual sample."""

    @functools.wraps(make)
    def generate(b: BackendLike, device: str, quick: bool, *args: object, **kwargs: object) -> list:
        made = make(b, device, quick, *args, **kwargs)
        return casegen.spread(made, EMULATED_QUICK) if quick and b.capabilities.emulated else made

    return generate
SMALL_SEQS = ((113, 203), (128, 128), (203, 113))
#: the quick matrix's shapes of the softcap, bias and ALiBi clauses: Sq < Sk and Sq > Sk, few rows
QUICK_SEQS = ((47, 93), (93, 47))


def _dtypes(b: BackendLike, device: str, quick: bool, backward: bool) -> list[torch.dtype]:
    caps = b.capabilities
    declared = casegen.dtypes_for(caps.backward_dtypes if backward else caps.dtypes, device)
    return (declared[:1] if quick else declared) or [casegen.primary_dtype((), device)]


@lean
def window_cases(b: BackendLike, device: str, quick: bool, backward: bool = False) -> list[AttentionCase]:
    """VAR-1/3: every window of the table (quick or full), D 64, two query heads per KV head in every other case."""
    table = WINDOW_QUICK if quick else WINDOW_FULL
    if backward:
        table = table[1::2]
    B, H, D = (1, 2, 32) if quick else (2, 4, 64)
    return [AttentionCase(B, H, H if i % 2 else H // 2, Sq, Sk, D, dtype, device, causal, window=window)
            for dtype in _dtypes(b, device, quick, backward) for i, (Sq, Sk, window, causal) in enumerate(table)]


@lean
def independence_cases(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    """VAR-2: a window that hides keys on both sides of every row (quick: Sq < Sk only)."""
    dtype = _dtypes(b, device, True, False)[0]
    return [AttentionCase(1, 2, 2, Sq, Sk, 32, dtype, device, None, window=(17, 16))
            for Sq, Sk in (SMALL_SEQS[:1] if quick else SMALL_SEQS)]


@lean
def softcap_cases(b: BackendLike, device: str, quick: bool, backward: bool = False) -> list[AttentionCase]:
    """VAR-4/5: each softcap, with and without causal masking and a window (quick: the smallest cap and the
    largest, one shape each)."""
    if quick:
        dtype = _dtypes(b, device, quick, backward)[0]
        return [AttentionCase(1, 4, 2, 47, 93, 32, dtype, device, None, softcap=SOFTCAPS[0]),
                AttentionCase(1, 4, 2, 93, 47, 32, dtype, device, "bottom_right", softcap=SOFTCAPS[-1],
                              window=(24, 0))]
    return [AttentionCase(2, 4, 2, Sq, Sk, 64, dtype, device, causal, softcap=cap,
                          window=(48, 0) if causal else None)
            for dtype in _dtypes(b, device, quick, backward) for cap in SOFTCAPS for Sq, Sk in SMALL_SEQS
            for causal in ((None,) if backward else (None, "bottom_right"))]


@lean
def bias_cases(b: BackendLike, device: str, quick: bool, backward: bool = False) -> list[AttentionCase]:
    """VAR-6: every bias shape and the boolean mask, causal in every other case (quick: three of them); the
    backward's cases at another head dim, so that their ids differ from the forward's."""
    if quick:
        dtype = _dtypes(b, device, quick, backward)[0]
        return [AttentionCase(2, 4, 2, 47, 93, 16 if backward else 32, dtype, device, causal, bias=kind)
                for causal, kind in ((None, "Hqk"), ("bottom_right", "B1qk"), (None, "mask"))]
    return [AttentionCase(2, 4, 2, Sq, Sk, 59 if backward else 64, dtype, device, "bottom_right" if i % 2 else None,
                          bias=kind)
            for dtype in _dtypes(b, device, quick, backward) for Sq, Sk in SMALL_SEQS
            for i, kind in enumerate(BIAS_KINDS)]


@lean
def alibi_cases(b: BackendLike, device: str, quick: bool, backward: bool = False) -> list[AttentionCase]:
    """VAR-7: ALiBi with Sq != Sk (where top-left and bottom-right distances differ), GQA, causal or not; the
    backward's cases at another head dim (distinct ids)."""
    if quick:
        dtype = _dtypes(b, device, quick, backward)[0]
        return [AttentionCase(1, 4, 2, Sq, Sk, 16 if backward else 32, dtype, device, causal, alibi=True)
                for (Sq, Sk), causal in zip(QUICK_SEQS, (None, "bottom_right"))]
    return [AttentionCase(2, 4, 2, Sq, Sk, 59 if backward else 64, dtype, device, causal, alibi=True)
            for dtype in _dtypes(b, device, quick, backward) for Sq, Sk in SMALL_SEQS
            for causal in (None, "bottom_right")]


@lean
def bad_variant_cases(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    """VAR-8: one small case per declared variant (the bad arguments are made from it)."""
    dtype = _dtypes(b, device, True, False)[0]
    return [AttentionCase(1, 2, 2, 17, 33, 32, dtype, device, window=(4, 4)),
            AttentionCase(1, 2, 2, 17, 33, 32, dtype, device, softcap=5.0),
            AttentionCase(1, 2, 2, 17, 33, 32, dtype, device, bias="qk"),
            AttentionCase(1, 2, 2, 17, 33, 32, dtype, device, alibi=True)]


def variant_kwargs(case: AttentionCase, seed: int) -> dict[str, object]:
    """The variant arguments of ``case``: its window and softcap, a bias drawn from ``seed`` (normal, twice
    unit size; a mask visible with probability 0.7 whose first row is all False), ALiBi slopes
    ``2^(-8(h+1)/Hq)`` (the ALiBi paper's)."""
    kwargs: dict[str, object] = {}
    if case.window is not None:
        kwargs["window"] = case.window
    if case.softcap is not None:
        kwargs["softcap"] = case.softcap
    if case.bias is not None:
        kwargs["bias"] = make_bias(case, seed)
    if case.alibi:
        slopes = [2.0 ** (-8.0 * (h + 1) / case.Hq) for h in range(case.Hq)]
        kwargs["alibi_slopes"] = torch.tensor(slopes, dtype=torch.float32, device=case.device)
    return kwargs


def make_bias(case: AttentionCase, seed: int) -> torch.Tensor:
    """The bias of ``case`` in its kind's shape, in the case's dtype (the mask: bool)."""
    g = casegen.generator(seed + 11)
    B, H, Sq, Sk = case.B, case.Hq, case.Sq, case.Sk
    shape = {"BHqk": (B, H, Sq, Sk), "Hqk": (H, Sq, Sk), "qk": (Sq, Sk), "B1qk": (B, 1, Sq, Sk),
             "mask": (B, 1, Sq, Sk)}[case.bias or "qk"]
    if case.bias == "mask":
        mask = torch.rand(shape, generator=g) < 0.7
        mask[:, :, 0] = False  # a row the mask hides entirely (ATT-4)
        return mask.to(case.device)
    return casegen.randn(shape, case.dtype, case.device, g, scale=2.0)


# -- packed sequences (VLEN) -----------------------------------------------------------------------------------

#: (query lengths, key lengths): ragged lengths, Sq_b != Sk_b, a single row, zero-length sequences
VARLEN_QUICK = (((37, 1, 70, 64), (37, 80, 50, 69)), ((5, 0, 70), (9, 33, 0)))
VARLEN_FULL = VARLEN_QUICK + (((300, 17, 1, 256), (300, 255, 19, 256)), ((0, 64, 0), (0, 64, 17)),
                              ((37, 1, 130, 64), (37, 80, 100, 129)))


@lean
def varlen_cases(b: BackendLike, device: str, quick: bool, backward: bool = False) -> list[VarlenCase]:
    """VLEN-1/4: each length mix under no mask, both causal alignments and (where declared) a window."""
    caps = b.capabilities
    declared = casegen.dtypes_for(caps.varlen_backward_dtypes if backward else caps.varlen_dtypes, device)
    dtypes = (declared[:1] if quick else declared) or [casegen.primary_dtype((), device)]
    masks = ((None, None), ("top_left", None), ("bottom_right", None), ("bottom_right", (32, 0)), (None, (16, 16)))
    if quick:  # a few masks, alternating between the two batches
        chosen = (masks[2], masks[4]) if backward else (masks[1], masks[3], masks[4])
        return [VarlenCase(*VARLEN_QUICK[n % 2], 2, 2 if n % 2 else 1, 32, dtypes[0], device, *mask)
                for n, mask in enumerate(chosen)]
    return [VarlenCase(lq, lk, 4, 2 if n % 2 else 4, 64, dtype, device, causal, window)
            for dtype in dtypes for n, (lq, lk) in enumerate(VARLEN_FULL) for causal, window in masks]


@lean
def leakage_cases(b: BackendLike, device: str, quick: bool, backward: bool = False) -> list[VarlenCase]:
    """VLEN-2: three sequences, the middle one watched, causal bottom-right and not."""
    dtypes = casegen.dtypes_for(b.capabilities.varlen_backward_dtypes if backward else b.capabilities.varlen_dtypes,
                                device)
    dtype = (dtypes or [casegen.primary_dtype((), device)])[0]
    return [VarlenCase((70, 33, 90), (64, 129, 90), 2, 2, 32, dtype, device, causal)
            for causal in (None, "bottom_right")]


@lean
def zero_length_cases(b: BackendLike, device: str, quick: bool) -> list[VarlenCase]:
    """VLEN-3: sequences with no queries, with no keys, and with neither."""
    dtypes = casegen.dtypes_for(b.capabilities.varlen_dtypes, device)
    dtype = (dtypes or [casegen.primary_dtype((), device)])[0]
    return [VarlenCase((0, 20, 7, 0, 3), (16, 0, 7, 0, 40), 2, 2, 32, dtype, device, causal)
            for causal in (None, "bottom_right")]


def packed_inputs(case: VarlenCase, seed: int) -> tuple[torch.Tensor, ...]:
    """``q, k, v, cu_seqlens_q, cu_seqlens_k`` of ``case`` drawn from ``seed``."""
    g = casegen.generator(seed)
    q = casegen.randn((sum(case.seqlens_q), case.Hq, case.D), case.dtype, case.device, g)
    k = casegen.randn((sum(case.seqlens_k), case.Hk, case.D), case.dtype, case.device, g)
    v = casegen.randn((sum(case.seqlens_k), case.Hk, case.D), case.dtype, case.device, g)
    return q, k, v, cu_seqlens(case.seqlens_q, case.device), cu_seqlens(case.seqlens_k, case.device)


def cu_seqlens(lengths: tuple[int, ...], device: str) -> torch.Tensor:
    """int32 ``[0, l_0, l_0 + l_1, ...]``."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


# -- paged decode (DEC) ------------------------------------------------------------------------------------------

#: (kv_lens, Sq, page_size): lengths off and on page multiples, one shorter than a page, page sizes 16, 64, 24
DECODE_QUICK = (((300, 17, 64, 100), 1, 16), ((129, 64, 200), 4, 64), ((33, 160), 16, 24))
DECODE_FULL = DECODE_QUICK + (((4099, 1, 1025), 1, 64), ((250, 16, 77, 900), 16, 16), ((1000, 17, 64, 300), 1, 16))
SPLITS = (3, 1, 2, 12)  # 12: more splits than any sequence has pages; an emulated quick run keeps 3


@lean
def decode_cases(b: BackendLike, device: str, quick: bool) -> list[DecodeCase]:
    """DEC-1: every table row, GQA (8 query heads on 2 KV heads) and MHA, the backend's own split count."""
    declared = casegen.dtypes_for(b.capabilities.decode_dtypes, device)
    dtypes = (declared[:1] if quick else declared) or [casegen.primary_dtype((), device)]
    D = 32 if quick else 64
    return [DecodeCase(lens, 8, 2 if i % 2 == 0 else 8, Sq, D, page, dtype, device)
            for dtype in dtypes for i, (lens, Sq, page) in enumerate(DECODE_QUICK if quick else DECODE_FULL)]


@lean
def split_cases(b: BackendLike, device: str, quick: bool) -> list[DecodeCase]:
    """DEC-2: each split count of SPLITS on one mixed-length batch."""
    dtype = (casegen.dtypes_for(b.capabilities.decode_dtypes, device) or [casegen.primary_dtype((), device)])[0]
    return [DecodeCase((150, 33, 129), 8, 2, 2, 32, 16, dtype, device, splits) for splits in SPLITS]


def paged_inputs(case: DecodeCase, seed: int) -> tuple[torch.Tensor, ...]:
    """``q, k_pages, v_pages, block_table, kv_lens`` of ``case``: a pool with a third more pages than the
    sequences use, each sequence's pages drawn at random from it (any order), unused table slots -1."""
    g = casegen.generator(seed)
    pages = [math.ceil(n / case.page_size) for n in case.kv_lens]
    pool = sum(pages) + sum(pages) // 3 + 1
    q = casegen.randn((case.B, case.Hq, case.Sq, case.D), case.dtype, case.device, g)
    k = casegen.randn((pool, case.page_size, case.Hk, case.D), case.dtype, case.device, g)
    v = casegen.randn((pool, case.page_size, case.Hk, case.D), case.dtype, case.device, g)
    order = torch.randperm(pool, generator=g)
    table = torch.full((case.B, max(pages)), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages):
        table[b, :n] = order[used:used + n].to(torch.int32)
        used += n
    lens = torch.tensor(case.kv_lens, dtype=torch.int32)
    return q, k, v, table.to(case.device), lens.to(case.device)


# -- fp8 -------------------------------------------------------------------------------------------------------

FP8_DESCALES = ((1.0, 1.0, 1.0), (0.25, 0.5, 2.0))


@lean
def fp8_cases(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
    """FP8-1: the ATT-1 quick shapes at D 64 and 128, causal and not (bottom-right where Sq > Sk); quick: two."""
    declared = b.capabilities.fp8_dtypes or (torch.float8_e4m3fn,)
    if quick:
        return [AttentionCase(1, 2, 2, 113, 203, 64, declared[0], device, None),
                AttentionCase(1, 2, 2, 239, 1, 128, declared[0], device, "bottom_right")]
    return [AttentionCase(1, 2, 2, Sq, Sk, D, dtype, device, causal)
            for dtype in declared for Sq, Sk in casegen.QUICK_SEQ_PAIRS for D in (64, 128)
            for causal in (None, "bottom_right")]


def fp8_inputs(case: AttentionCase, seed: int, descales: tuple[float, float, float]) -> tuple[torch.Tensor, ...]:
    """``q, k, v`` in the case's fp8 dtype (standard normal draws divided by their descale, then rounded) and the
    three descales as float32 0-dim tensors."""
    wide = dataclasses.replace(case, dtype=torch.float32)
    drawn = casegen.attention_inputs(wide, seed)
    fp8 = tuple((x / d).to(case.dtype) for x, d in zip(drawn, descales))
    return (*fp8, *(torch.tensor(d, dtype=torch.float32, device=case.device) for d in descales))
