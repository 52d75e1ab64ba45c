"""``attention(q, k, v, *, causal=None, scale=None, tiles=None, window=None, softcap=None, bias=None,
alibi_slopes=None) -> (out, lse)`` (SPEC ATT, VAR).

``q [B, Hq, Sq, D]``, ``k, v [B, Hk, Sk, D]`` with ``Hq % Hk == 0`` (query head h reads KV head
``h // (Hq // Hk)``); ``causal`` None, True (the backend's ``causal_default``), ``"top_left"`` or
``"bottom_right"``; ``scale`` defaults to ``1/sqrt(D)``; ``tiles = (block_m, block_n)`` only where the
backend declares tile sizes; ``window``, ``softcap``, ``bias``, ``alibi_slopes`` the variants of SPEC VAR
(``implementations.variants``), each only where the backend declares it in ``attention_variants``. Returns
``out`` like q and ``lse [B, Hq, Sq]`` in natural log, float32 (float64 for float64 inputs).

Cost: ``4·B·Hq·Sq·Sk·D`` FLOPs (``Q Kᵀ`` and ``P V`` are ``2·Sq·Sk·D`` each per head), halved for causal with
``Sq = Sk`` (half the score matrix is visible); with a window, ``4·B·Hq·D`` per visible (query, key) pair
(:func:`visible_pairs`).

Oracle: ``out = softmax(scale QKᵀ + mask) V`` materialised in float64 (:func:`materialised`), on the CPU or,
for production sizes, on the inputs' device in chunks of query rows. Naive: the same in dtype ``t``, the
matrix products in ``t`` and the softmax in float32 for float16/bfloat16 (FlashAttention's own reference).

Benchmarks: ``attention`` (:data:`BENCH`) over the attention table (:func:`attention_table`); the backward's
module adds ``attention_backward`` and ``attention_fwd_bwd`` on the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant, wide_dtype
from implementations.ops.exact import LOW_PRECISION
from implementations.ops.spec import Expected, OpSpec
from implementations.ops.variant_logits import capped_logits, window_visibility
from implementations.ops.workload import AttentionWorkload, Baseline, BenchOp, Reference, normal
from implementations.variants import Variants


@dataclass(frozen=True)
class AttentionInputs:
    """A validated forward call: the tensors, the resolved causal variant and scale, the tile sizes."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    causal: CausalVariant | None
    scale: float
    tiles: tuple[int, int] | None = None
    variants: Variants = Variants()


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
          causal: bool | str | None = None, scale: float | None = None, tiles: tuple[int, int] | None = None,
          window: tuple[int, int] | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
          alibi_slopes: torch.Tensor | None = None) -> AttentionInputs:
    """The boundary check of the forward (validate.attention_args, validate.variant_args)."""
    variant, resolved = validate.attention_args(caps, q, k, v, causal=causal, scale=scale, tiles=tiles)
    variants = validate.variant_args(caps, scores_shape(q, k), q.device, window=window, softcap=softcap,
                                     bias=bias, alibi_slopes=alibi_slopes)
    return AttentionInputs(q, k, v, variant, resolved, tuple(tiles) if tiles is not None else None, variants)


def scores_shape(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """``[B, Hq, Sq, Sk]``, the shape a bias broadcasts to."""
    return (q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    q = inputs["q"]
    return [Expected.like("out", q), Expected("lse", tuple(q.shape[:3]), wide_dtype(q.dtype), q.device)]


def forward_flops(B: int, Hq: int, Sq: int, Sk: int, D: int, causal: bool) -> int:
    """``4·B·Hq·Sq·Sk·D``, halved for causal; the causal count is defined for ``Sq = Sk`` only (SPEC)."""
    if causal and Sq != Sk:
        raise ValueError(f"the causal FLOP count is defined for Sq = Sk only, got Sq={Sq}, Sk={Sk}")
    full = 4 * B * Hq * Sq * Sk * D
    return full // 2 if causal else full


def visible_pairs(Sq: int, Sk: int, *, causal_offset: int | None = None, window: tuple[int, int] | None = None) -> int:
    """The (query, key) pairs a window (and causal offset ``j <= i + offset``) leaves visible, summed over rows:
    the work a kernel that skips invisible keys does (``4·D`` FLOPs per pair and head)."""
    total = 0
    for i in range(Sq):
        lo, hi = 0, Sk - 1
        if window is not None and window[0] >= 0:
            lo = max(lo, i + Sk - Sq - window[0])
        if window is not None and window[1] >= 0:
            hi = min(hi, i + Sk - Sq + window[1])
        if causal_offset is not None:
            hi = min(hi, i + causal_offset)
        total += max(0, hi - lo + 1)
    return total
# ------------------------------------------------------------------------------------------------
# Oracle


def visibility(Sq: int, Sk: int, causal: CausalVariant | None,
               device: torch.device | str = "cpu", rows: range | None = None) -> torch.Tensor | None:
    """``[Sq, Sk]`` bool, True where key j is visible to query i (SPEC ATT-3); None when all are visible.

    Written from the clause, independently of ``implementations.base.causal_offset``: a shared helper would
    let one bug hide in both the oracle and the backends.

    top_left: ``j <= i``; bottom_right: ``j <= i + Sk - Sq``. ``rows`` selects query rows (a chunk of the
    Sq rows; all of them when None).
    """
    if causal is None:
        return None
    i = torch.as_tensor(rows if rows is not None else range(Sq), device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    offset = 0 if causal == "top_left" else Sk - Sq
    return j <= i + offset


def _expand_kv(x: torch.Tensor, Hq: int) -> torch.Tensor:
    """Repeat KV heads so query head h reads KV head ``h // (Hq // Hk)`` (SPEC notation)."""
    return x.repeat_interleave(Hq // x.shape[1], dim=1)


def materialised(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: CausalVariant | None,
                 scale: float, compute: torch.dtype, naive: bool = True, rows: tuple[int, int] | None = None,
                 p_round: torch.dtype | None = None, **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = softmax(scale QKᵀ + mask) V`` and ``lse`` computed in ``compute`` dtype, differentiably.

    ``rows = (first, Sq)`` says ``q`` holds query rows ``first, first + 1, ...`` of a problem of ``Sq`` rows
    (for the causal mask of a chunk); None: ``q`` holds every row. ``variants``: the ``window``, ``softcap``,
    ``bias`` and ``alibi_slopes`` of SPEC VAR (``implementations.ops.variant_logits``).

    Low-precision ``compute`` runs the matrix products in that dtype and the softmax in float32. The
    ``naive`` form scales Q before the product (as FlashAttention's reference does) and sums over the head
    dim and over the keys in reverse order: exact identities, so it differs from the oracle (``naive=False``)
    by honest rounding only, even in float64 where it would otherwise be the oracle itself. Rows with no
    visible key give out 0 and lse -inf, and zero (not NaN) gradients. ``p_round``: P is rounded to that dtype
    before ``P V`` (the fp8 naive form, SPEC FP8-1).
    """
    soft = torch.float32 if compute in LOW_PRECISION else compute
    qc, kc, vc = (x.to(compute) for x in (q, k, v))
    kc, vc = _expand_kv(kc, q.shape[1]), _expand_kv(vc, q.shape[1])
    first, Sq = rows if rows is not None else (0, q.shape[2])
    here = range(first, first + q.shape[2])
    visible = _and(visibility(Sq, k.shape[2], causal, q.device, here),
                   window_visibility(Sq, k.shape[2], variants.get("window"), q.device, here))  # type: ignore[arg-type]
    if naive:
        qc, kc = (qc * scale).flip(-1), kc.flip(-1).flip(-2)
        vc = vc.flip(-2)
        visible = visible.flip(-1) if visible is not None else None
        scores = (qc @ kc.transpose(-1, -2)).to(soft)
    else:
        scores = (qc @ kc.transpose(-1, -2)).to(soft) * scale
    scores = capped_logits(scores, Sq=Sq, rows=here, flipped=naive, softcap=variants.get("softcap"),  # type: ignore[arg-type]
                           bias=variants.get("bias"), alibi_slopes=variants.get("alibi_slopes"))  # type: ignore[arg-type]
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    empty = (scores == float("-inf")).all(dim=-1, keepdim=True)  # rows with no visible key (ATT-4)
    scores = scores.masked_fill(empty, 0.0)
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - lse[..., None]).masked_fill(empty, 0.0)
    lse = lse.masked_fill(empty[..., 0], float("-inf"))
    if p_round is not None:
        p = p.to(p_round).to(soft)
    out = p.to(compute) @ vc
    return out, lse


def _and(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """The conjunction of two visibility masks, None standing for all visible."""
    return b if a is None else (a if b is None else a & b)


#: score-matrix elements (B·Hq·Sq·Sk) up to which the oracle runs on the CPU; larger problems run in float64
#: on the inputs' device (production sizes on a GPU), still exact to float64 rounding
CPU_ORACLE_ELEMENTS = 1 << 24
#: score-matrix elements of one chunk of query rows (1 GiB in float64), bounding the oracle's memory
CHUNK_ELEMENTS = 1 << 27


def oracle_device(q: torch.Tensor, k: torch.Tensor) -> torch.device:
    """Where the float64 oracle runs: the CPU, or the inputs' device for problems above CPU_ORACLE_ELEMENTS."""
    elements = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    return torch.device("cpu") if elements <= CPU_ORACLE_ELEMENTS else q.device


def query_chunks(q: torch.Tensor, k: torch.Tensor) -> list[tuple[int, int]]:
    """``(first, stop)`` query-row ranges whose score matrices hold at most CHUNK_ELEMENTS elements."""
    Sq = q.shape[2]
    step = max(1, CHUNK_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[2]))
    return [(i, min(i + step, Sq)) for i in range(0, Sq, step)]


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: CausalVariant | None,
           scale: float, **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle of the forward, where :func:`oracle_device` says, in chunks of query rows;
    returned on the CPU. ``variants`` as :func:`materialised`'s."""
    dev = oracle_device(q, k)
    kd, vd = k.to(dev), v.to(dev)
    outs, lses = [], []
    with torch.no_grad():
        for first, stop in query_chunks(q, k):
            out, lse = materialised(q[:, :, first:stop].to(dev), kd, vd, causal=causal, scale=scale,
                                    compute=torch.float64, naive=False, rows=(first, q.shape[2]), **variants)
            outs.append(out.cpu())
            lses.append(lse.cpu())
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: CausalVariant | None, scale: float,
          dtype: torch.dtype, **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive forward in ``dtype`` on the inputs' device (:func:`materialised` with ``naive=True``)."""
    with torch.no_grad():
        return materialised(q, k, v, causal=causal, scale=scale, compute=dtype, **variants)


# ------------------------------------------------------------------------------------------------
# Benchmarks: the attention table, shared with the backward's benchmark operations

TOKENS_PER_BATCH_GPU = 16384
GPU_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_QUICK_SEQ_LENS = (1024, 4096, 16384)
#: heads per head dim, so that H·D = 2048 at both head dims (the shapes of the H200 anchors)
HEADS_FOR_HEAD_DIM = {64: 32, 128: 16}
CPU_SEQ_LENS = (128, 256, 512, 1024)
CPU_QUICK_SEQ_LENS = (128, 256)
TOKENS_PER_BATCH_CPU = 1024
TOKENS_PER_BATCH_CPU_QUICK = 256
CPU_HEADS, CPU_QUICK_HEADS, CPU_HEAD_DIM = 4, 2, 64
#: the baseline of every attention benchmark operation
BASELINES = (Baseline("cuda", "torch-flash", vendor=True), Baseline("cpu", "reference", vendor=False))
#: the rows every attention benchmark record is set beside on the GPU: compiled FlexAttention and SDPA cuDNN,
#: the kernels people use
REFERENCE_ROWS = {"cuda": ("flex", "torch-cudnn")}


def attention_table(bench: BenchOp, device: str, quick: bool) -> list[AttentionWorkload]:
    """16k tokens per batch on a GPU: ``S ∈ {512, ..., 16k}``, ``B = 16384 // S``, ``D ∈ {64, 128}`` with
    ``H·D = 2048``, causal and not, bfloat16; on the CPU the same sweep on small shapes in float32."""
    if device == "cuda":
        seqs = GPU_QUICK_SEQ_LENS if quick else GPU_SEQ_LENS
        dims = (128,) if quick else (64, 128)
        return [AttentionWorkload(bench, TOKENS_PER_BATCH_GPU // S, HEADS_FOR_HEAD_DIM[D], S, D, causal,
                                  torch.bfloat16) for D in dims for causal in (False, True) for S in seqs]
    seqs, tokens, heads = ((CPU_QUICK_SEQ_LENS, TOKENS_PER_BATCH_CPU_QUICK, CPU_QUICK_HEADS) if quick
                           else (CPU_SEQ_LENS, TOKENS_PER_BATCH_CPU, CPU_HEADS))
    return [AttentionWorkload(bench, tokens // S, heads, S, CPU_HEAD_DIM, causal, torch.float32)
            for causal in (False, True) for S in seqs]


def attention_label(w: AttentionWorkload) -> str:
    """E.g. ``B16H16-S1024-D128-causal``."""
    return f"B{w.B}H{w.H}-S{w.S}-D{w.D}" + ("-causal" if w.causal else "")


def attention_describe(w: AttentionWorkload) -> dict[str, object]:
    return {"B": w.B, "Hq": w.H, "Hk": w.H, "Sq": w.S, "Sk": w.S, "D": w.D, "causal": w.causal, "flops": w.flops}


def attention_inputs(w: AttentionWorkload, g: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    """``q, k, v`` standard normal, and ``dout`` for operations that run the backward."""
    shape = (w.B, w.H, w.S, w.D)
    names = ("q", "k", "v") if "attention_backward" not in w.bench.calls else ("q", "k", "v", "dout")
    return {name: normal(g, shape, w.dtype, device) for name in names}


def forward_call(backend: Any, w: AttentionWorkload,
                 inputs: dict[str, torch.Tensor]) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The backend's forward on ``inputs`` with the default scale, causal as ``causal=True``."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    causal = True if w.causal else None
    return lambda: backend.attention(q, k, v, causal=causal, scale=None)


def sampled_heads(w: AttentionWorkload, inputs: dict[str, torch.Tensor],
                  names: tuple[str, ...]) -> tuple[tuple[object, ...], list[torch.Tensor]]:
    """The gate compares the ``(b, h)`` slices ``(0, 0)`` and ``(B-1, H-1)`` (heads are independent): their
    index, and the named inputs at them as the heads of a batch of one."""
    pairs = sorted({(0, 0), (w.B - 1, w.H - 1)})
    bs, hs = [b for b, _ in pairs], [h for _, h in pairs]
    return (bs, hs), [inputs[n][bs, hs].unsqueeze(0) for n in names]


def forward_reference(w: AttentionWorkload, inputs: dict[str, torch.Tensor]) -> dict[str, Reference]:
    """``out`` and ``lse`` of the sampled heads by the float64 oracle."""
    index, (q, k, v) = sampled_heads(w, inputs, ("q", "k", "v"))
    out, lse = oracle(q, k, v, causal="top_left" if w.causal else None, scale=w.scale)
    return {"out": Reference(index, out[0]), "lse": Reference(index, lse[0])}


def workload_flops(w: AttentionWorkload) -> int:
    """The forward FLOPs of ``w``."""
    return forward_flops(w.B, w.H, w.S, w.S, w.D, w.causal)


BENCH: BenchOp[AttentionWorkload] = BenchOp(
    name="attention", asv_class="AttentionForward", calls=("attention",), outputs=("out", "lse"),
    table=attention_table,
    label=attention_label, describe=attention_describe, inputs=attention_inputs, bind=forward_call,
    reference=forward_reference, baselines=BASELINES, flops=workload_flops, reference_rows=REFERENCE_ROWS)


SPEC: OpSpec[AttentionInputs] = OpSpec(
    name="attention",
    signature="attention(q, k, v, *, causal=None, scale=None, tiles=None, window=None, softcap=None, bias=None, "
              "alibi_slopes=None) -> (out, lse)",
    inputs=("q", "k", "v"), outputs=("out", "lse"), declared_dtypes=lambda caps: caps.dtypes, validate=check,
    expected=expected, oracle=oracle, naive=naive, multipliers={"out": 2.0, "lse": 2.0}, benchmarks=(BENCH,),
)
