"""The case matrix, generated from a backend's capabilities, and the seeded random inputs of each case.

Shapes and head dims are SPEC ATT-1's. The full matrix crosses every head dim with every (Sq, Sk) for the
backend's primary dtype, and every (Sq, Sk) with two head dims for its other dtypes; ``--quick`` keeps the
small shapes and three head dims. A case the backend declares unsupported still appears, and is reported as
*unsupported* with the backend's reasons.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from collections.abc import Callable, Iterable

import torch

from implementations.base import (
    CAUSAL_VARIANTS,
    AttentionCase,
    BackendLike,
    Capabilities,
    Case,
    CausalVariant,
    RowsCase,
)

HEAD_DIMS = (16, 32, 40, 59, 64, 80, 96, 111, 128, 256)
SEQ_PAIRS = ((1, 1), (1, 239), (3, 799), (113, 203), (128, 217), (127, 513), (239, 1), (512, 256),
             (1023, 1024), (1024, 1023), (2048, 2048))
QUICK_HEAD_DIMS = (16, 59, 128)
QUICK_SEQ_PAIRS = ((1, 1), (1, 239), (3, 799), (113, 203), (127, 513), (239, 1), (512, 256))
#: seeded random shapes added to ATT-1 and GRAD-1 (SPEC: "plus seeded random shapes")
RANDOM_SHAPES = 3
#: shapes of ATT-1 and GRAD-1 also fed as strided ``bshd`` views (storage [B, S, H, D]), as callers pass them
STRIDED_SEQ_PAIRS = ((113, 203), (127, 513))
#: production sizes ``(Sq, Sk, D)`` of ATT-1 and GRAD-1 per device and matrix, where kernel bugs hide behind
#: size thresholds: more than 8192 keys, more than 2^16 keys (16-bit indices), head dims 64, 128, 256. On the
#: CPU a cheap subset (few query rows over many keys), on a GPU square 8k problems as kernels run them.
PRODUCTION_FORWARD: dict[tuple[str, bool], tuple[tuple[int, int, int], ...]] = {
    ("cpu", True): ((16, 65600, 64), (64, 8200, 128)),
    ("cpu", False): ((16, 65600, 64), (64, 8200, 128), (32, 8200, 256)),
    ("cuda", True): ((8192, 8192, 128), (256, 65600, 64)),
    ("cuda", False): ((8192, 8192, 64), (8192, 8192, 128), (8192, 8192, 256), (256, 65600, 64),
                      (256, 65600, 128)),
}
#: production sizes ``(rows, cols)`` of the row operations per device (quick and full alike: each is one
#: pass over memory): KD vocabularies past 2^17 (odd), softmax rows past 2^16, reductions over 2^24 and an odd
#: n past it on a GPU (past 2^16 on the CPU), scans longer than one block of a kernel
PRODUCTION_ROWS: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {
    "kd_loss": {"cpu": ((2, 131073),), "cuda": ((64, 131072), (8, 262147))},
    "softmax_stats": {"cpu": ((2, 65537),), "cuda": ((64, 131072), (4, 262147))},
    "reduce_sum": {"cpu": ((1, 65537),), "cuda": ((1, 1 << 24), (1, (1 << 24) + 1))},
    "prefix_sum": {"cpu": ((1, 4099),), "cuda": ((1, 4099), (1, (1 << 20) + 3))},
}
PRODUCTION_BACKWARD: dict[tuple[str, bool], tuple[tuple[int, int, int], ...]] = {
    ("cpu", True): ((32, 8200, 64),),
    ("cpu", False): ((32, 8200, 64), (16, 65600, 128)),
    ("cuda", True): ((8192, 8192, 128),),
    ("cuda", False): ((8192, 8192, 64), (8192, 8192, 128), (256, 65600, 128)),
}

def available_devices() -> set[str]:
    """Devices present on this machine."""
    return {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())


def devices_for(backend: BackendLike, only: Iterable[str] | None = None) -> list[str]:
    """The backend's declared devices that exist here (and are among ``only`` when given)."""
    allowed = available_devices() if only is None else available_devices() & set(only)
    return [d for d in backend.capabilities.devices if d in allowed]


def dtypes_for(dtypes: tuple[torch.dtype, ...], device: str) -> list[torch.dtype]:
    """Declared dtypes, primary first: bfloat16 on CUDA, float32 on the CPU when declared."""
    primary = torch.bfloat16 if device == "cuda" else torch.float32
    return sorted(dtypes, key=lambda d: (d != primary, str(d)))


def primary_dtype(dtypes: tuple[torch.dtype, ...], device: str) -> torch.dtype:
    """The first of :func:`dtypes_for`, or float32 (then reported unsupported) when none is declared."""
    return (dtypes_for(dtypes, device) or [torch.float32])[0]


def heads_for(Sq: int, Sk: int) -> tuple[int, int]:
    """(B, Hq) small enough that the float64 oracle stays cheap at the largest shapes."""
    return (1, 2) if Sq * Sk >= 1 << 20 else (2, 3)


def random_seq_pairs(seed: int, count: int = RANDOM_SHAPES, quick: bool = False) -> list[tuple[int, int]]:
    """Seeded random (Sq, Sk) pairs, the seed fixed so runs are comparable."""
    rng = random.Random(seed)
    top = 300 if quick else 1500
    return [(rng.randint(1, top), rng.randint(1, top)) for _ in range(count)]


def attention_matrix(backend: BackendLike, device: str, quick: bool, *, backward: bool = False,
                     causal: CausalVariant | None = None) -> list[AttentionCase]:
    """ATT-1 / GRAD-1 cases for ``backend`` on ``device`` (see the module docstring); quick runs give the
    other dtypes four small shapes at D = 64."""
    caps = backend.capabilities
    dtypes = dtypes_for(caps.backward_dtypes if backward else caps.dtypes, device)
    if not dtypes:
        dtypes = [torch.bfloat16 if device == "cuda" else torch.float32]  # reported unsupported
    head_dims = QUICK_HEAD_DIMS if quick or backward else HEAD_DIMS
    seqs = list(QUICK_SEQ_PAIRS if quick else SEQ_PAIRS) + random_seq_pairs(1234, quick=quick)
    cases = []
    for i, dtype in enumerate(dtypes):
        dims = head_dims if i == 0 else ((64,) if quick else (64, 59))
        for Sq, Sk in (seqs if i == 0 or not quick else seqs[:4]):
            for D in dims:
                B, H = heads_for(Sq, Sk)
                cases.append(AttentionCase(B, H, H, Sq, Sk, D, dtype, device, causal))
    for Sq, Sk in STRIDED_SEQ_PAIRS:
        B, H = heads_for(Sq, Sk)
        cases += [AttentionCase(B, H, H, Sq, Sk, D, dtypes[0], device, causal, layout="bshd")
                  for D in (head_dims[1], 64)]
    return list(dict.fromkeys(cases))


def production_attention(backend: BackendLike, device: str, quick: bool, *,
                         backward: bool = False) -> list[AttentionCase]:
    """ATT-1 / GRAD-1 cases at production sizes (``PRODUCTION_FORWARD`` / ``PRODUCTION_BACKWARD``), B 1, two
    heads, in the backend's primary dtype."""
    caps = backend.capabilities
    dtype = primary_dtype(caps.backward_dtypes if backward else caps.dtypes, device)
    sizes = (PRODUCTION_BACKWARD if backward else PRODUCTION_FORWARD)[(device, quick)]
    return [AttentionCase(1, 2, 2, Sq, Sk, D, dtype, device) for Sq, Sk, D in sizes]


def small_attention(backend: BackendLike, device: str, quick: bool, *, backward: bool = False,
                    causal_variants: Iterable[str | None] = (None,),
                    seqs: Iterable[tuple[int, int]] = ((113, 203), (128, 128), (239, 1)),
                    D: int = 64, heads: tuple[int, int] = (3, 3), every_dtype: bool = True) -> list[AttentionCase]:
    """A few small attention cases per dtype and causal variant, for property clauses."""
    caps = backend.capabilities
    dtypes = dtypes_for(caps.backward_dtypes if backward else caps.dtypes, device)
    dtypes = dtypes if (every_dtype and not quick) else dtypes[:1]
    if not dtypes:
        dtypes = [torch.bfloat16 if device == "cuda" else torch.float32]
    return [AttentionCase(2, heads[0], heads[1], Sq, Sk, D, dtype, device, causal)
            for dtype in dtypes for causal in causal_variants for Sq, Sk in seqs]


def causal_matrix(backend: BackendLike, device: str, quick: bool, backward: bool = False) -> list[AttentionCase]:
    """ATT-3: every shape of ATT-1 under both causal variants, at D 64 and the primary dtype."""
    seqs = QUICK_SEQ_PAIRS if quick else SEQ_PAIRS
    caps = backend.capabilities
    dtype = primary_dtype(caps.backward_dtypes if backward else caps.dtypes, device)
    cases = []
    for causal in CAUSAL_VARIANTS:
        for Sq, Sk in seqs:
            B, H = heads_for(Sq, Sk)
            cases.append(AttentionCase(B, H, H, Sq, Sk, 64, dtype, device, causal))
    return cases


def fit(case: AttentionCase, caps: Capabilities) -> AttentionCase:
    """The nearest case the backend's declared shape limits admit: D moved into the declared set, range and
    multiple; Sq and Sk made equal where required (to their geometric mean, so the score matrix keeps its
    size), rounded up to the declared multiple (down where that passes ``max_seq_len``); B capped. A case
    that fits is returned as it is."""
    lo, hi = caps.head_dims
    if caps.head_dim_set:
        D = min(caps.head_dim_set, key=lambda d: (abs(d - case.D), d))
    else:
        D = min(max(case.D, lo), hi)
        m = caps.head_dim_multiple
        D = -(-D // m) * m if -(-D // m) * m <= hi else D // m * m
    Sq, Sk = case.Sq, case.Sk
    if caps.equal_seq_lens:
        Sq = Sk = math.ceil(math.sqrt(Sq * Sk))
    m = caps.seq_len_multiple
    Sq, Sk = (-(-S // m) * m for S in (Sq, Sk))
    if caps.max_seq_len is not None:
        top = caps.max_seq_len // m * m
        Sq, Sk = min(Sq, top), min(Sk, top)
    B = min(case.B, caps.max_batch) if caps.max_batch is not None else case.B
    return dataclasses.replace(case, B=B, Sq=Sq, Sk=Sk, D=D)


def reach(backend: BackendLike, op: str, cases: list[Case],
          premise: Callable[[Case], bool] | None = None) -> tuple[list[Case], bool]:
    """A clause's cases for ``backend``, each attention case its declared shape limits reject followed by the
    nearest case they admit (:func:`fit`) where that case still has the clause's ``premise``, so that every
    clause meets a backend limited to, say, square lengths that are multiples of 128; and whether any case is
    supported at all (a clause with none is reported as "no case fits the declared limits")."""
    reached: list[Case] = []
    for case in cases:
        reached.append(case)
        if isinstance(case, AttentionCase) and backend.not_supported_reasons(op, case):
            fitted = fit(case, backend.capabilities)
            if (fitted != case and not backend.not_supported_reasons(op, fitted)
                    and (premise is None or premise(fitted))):
                reached.append(fitted)
    reached = list(dict.fromkeys(reached))
    return reached, any(not backend.not_supported_reasons(op, c) for c in reached)


def production_rows(op: str, dtypes: tuple[torch.dtype, ...], device: str) -> list[RowsCase]:
    """The production-size ``[rows, cols]`` cases of ``op`` (``PRODUCTION_ROWS``) in the primary declared dtype."""
    dtype = primary_dtype(dtypes, device)
    return [RowsCase(r, c, dtype, device) for r, c in PRODUCTION_ROWS[op][device]]


#: cases per clause an emulated backend meets unless every case is asked for
EMULATED_SAMPLE = 6


def spread(cases: list[Case], count: int) -> list[Case]:
    """At most ``count`` of ``cases``, evenly spaced from the first to the last (all of them when fewer)."""
    if len(cases) <= count:
        return cases
    if count == 1:
        return cases[:1]
    return [cases[round(i * (len(cases) - 1) / (count - 1))] for i in range(count)]


def has_masked_rows(case: Case) -> bool:
    """Bottom-right causal with Sq > Sk: the first Sq - Sk query rows see no key (ATT-4, GRAD-5)."""
    return isinstance(case, AttentionCase) and case.Sq > case.Sk


def memory_case(dtypes: tuple[torch.dtype, ...], device: str, S: int) -> list[AttentionCase]:
    """The one case of a memory-growth clause (ATT-10, GRAD-2): B 1, 4 heads, Sq = Sk = S (the largest of
    :func:`memory_lengths`), D 32 on the CPU and 64 on CUDA, in the primary declared dtype."""
    dtype = primary_dtype(dtypes, device)
    return [AttentionCase(1, 4, 4, S, S, 32 if device == "cpu" else 64, dtype, device, None)]


def memory_cases(dtypes: Callable[[Capabilities], tuple[torch.dtype, ...]],
                 largest: dict[str, int]) -> Callable[[BackendLike, str, bool], list[AttentionCase]]:
    """The case generator of a memory-growth clause: :func:`memory_case` in the dtypes ``dtypes`` reads from a
    backend's capabilities, at the device's largest sequence length ``largest[device]``."""

    def generate(b: BackendLike, device: str, quick: bool) -> list[AttentionCase]:
        return memory_case(dtypes(b.capabilities), device, largest[device])

    return generate


def memory_lengths(S: int) -> list[int]:
    """The sequence lengths a memory-growth clause measures at: four doublings up to S."""
    return [S // 8, S // 4, S // 2, S]


def memory_sized(case: Case) -> bool:
    """A memory-growth case whose lengths tell linear from quadratic growth: square, S >= 2048 (the
    smallest length 256 or more) and a multiple of 8 (whole lengths)."""
    return isinstance(case, AttentionCase) and case.Sq == case.Sk >= 2048 and case.Sq % 8 == 0


def rows_cases(dtypes: tuple[torch.dtype, ...], device: str, shapes: Iterable[tuple[int, int]]) -> list[RowsCase]:
    """``[rows, cols]`` cases for every declared dtype (or float32, reported unsupported, when none)."""
    return [RowsCase(r, c, dtype, device) for dtype in (dtypes_for(dtypes, device) or [torch.float32])
            for r, c in shapes]


# ---------------------------------------------------------------------------------------------
# Inputs


def seed_for(test_id: str, base: int = 0) -> int:
    """The seed of one case: a hash of its id mixed with the run's base seed."""
    return (zlib.crc32(test_id.encode()) ^ (base * 0x9E3779B1)) & 0x7FFFFFFF


def generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(shape: tuple[int, ...], dtype: torch.dtype, device: str, g: torch.Generator,
          scale: float = 1.0) -> torch.Tensor:
    """Fresh standard-normal draws (never zeros), made on the CPU in float64 then cast, so every device
    and dtype sees the same values for the same seed."""
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    return x.to(dtype).to(device)


def attention_inputs(case: AttentionCase, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V of ``case`` drawn from ``seed``, laid out as ``case.layout`` says (the same values either way)."""
    g = generator(seed)
    q = randn((case.B, case.Hq, case.Sq, case.D), case.dtype, case.device, g)
    k = randn((case.B, case.Hk, case.Sk, case.D), case.dtype, case.device, g)
    v = randn((case.B, case.Hk, case.Sk, case.D), case.dtype, case.device, g)
    if case.layout == "bshd":  # [B, S, H, D] storage, seen as [B, H, S, D]
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    return q, k, v
