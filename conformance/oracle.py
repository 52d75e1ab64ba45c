"""The oracle and the naive implementations the tolerance rule compares against (SPEC "Tolerance rule").

The oracle is the straightforward materialising definition evaluated in float64 on the CPU, with torch
autograd for gradients. ``naive_t`` is the same definition run in dtype ``t`` on the backend's device: for
float16/bfloat16 the two matrix products run in ``t`` while the softmax runs in float32 (FlashAttention's
own reference), so its error is what an honest dtype-``t`` implementation makes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from implementations.base import CausalVariant
from implementations.ops.variant_logits import capped_logits, window_visibility

LOW_PRECISION = (torch.float16, torch.bfloat16)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype lse, softmax statistics, delta and the KD loss come in: float64 for float64, else float32.

    Kept here rather than imported from the implementations, so the oracle shares no code with backends."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: CausalVariant | None,
    scale: float,
    compute: torch.dtype,
    naive: bool = True,
    rows: tuple[int, int] | None = None,
    p_round: torch.dtype | None = None,
    **variants: object,
) -> tuple[torch.Tensor, torch.Tensor]:
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


def _row_chunks(q: torch.Tensor, k: torch.Tensor) -> list[tuple[int, int]]:
    """``(first, stop)`` query-row ranges whose score matrices hold at most CHUNK_ELEMENTS elements."""
    Sq = q.shape[2]
    step = max(1, CHUNK_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[2]))
    return [(i, min(i + step, Sq)) for i in range(0, Sq, step)]


def oracle_attention(q, k, v, *, causal, scale, **variants) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001, ANN003
    """The float64 oracle of forward attention, on the CPU (or, for large problems, on the inputs' device), in
    chunks of query rows; returned on the CPU. ``variants`` as :func:`attention`'s."""
    dev = oracle_device(q, k)
    kd, vd = k.to(dev), v.to(dev)
    outs, lses = [], []
    with torch.no_grad():
        for first, stop in _row_chunks(q, k):
            out, lse = attention(q[:, :, first:stop].to(dev), kd, vd, causal=causal, scale=scale,
                                 compute=torch.float64, naive=False, rows=(first, q.shape[2]), **variants)
            outs.append(out.cpu())
            lses.append(lse.cpu())
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def attention_grads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dout: torch.Tensor,
    *,
    causal: CausalVariant | None,
    scale: float,
    compute: torch.dtype,
    naive: bool = True,
    **variants: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` of :func:`attention` in ``compute`` dtype by autograd (GQA sums come from the expand)."""
    leaves = [x.detach().to(compute).requires_grad_() for x in (q, k, v)]
    with torch.enable_grad():
        out, _ = attention(*leaves, causal=causal, scale=scale, compute=compute, naive=naive, **variants)
        grads = torch.autograd.grad(out, leaves, dout.to(compute))
    return grads[0], grads[1], grads[2]


def oracle_grads(q, k, v, dout, *, causal, scale, **variants) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001, ANN003
    """The float64 oracle of the attention gradients (GRAD-1), by autograd, where :func:`oracle_attention`
    runs, in chunks of query rows: a chunk's rows give its dq rows and add their share to dk and dv."""
    dev = oracle_device(q, k)
    kd, vd = (x.detach().to(dev, torch.float64).requires_grad_() for x in (k, v))
    dqs, dk, dv = [], torch.zeros_like(kd), torch.zeros_like(vd)
    for first, stop in _row_chunks(q, k):
        qc = q[:, :, first:stop].detach().to(dev, torch.float64).requires_grad_()
        with torch.enable_grad():
            out, _ = attention(qc, kd, vd, causal=causal, scale=scale, compute=torch.float64, naive=False,
                               rows=(first, q.shape[2]), **variants)
            gq, gk, gv = torch.autograd.grad(out, (qc, kd, vd), dout[:, :, first:stop].to(dev, torch.float64))
        dqs.append(gq.cpu())
        dk += gk
        dv += gv
    return torch.cat(dqs, dim=2), dk.cpu(), dv.cpu()


def softmax_stats(x: torch.Tensor, compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One-shot row statistics (SMX-1): ``m = max x``, ``l = sum exp(x - m)``; a row of -inf gives (-inf, 0)."""
    xc = x.to(compute)
    m = xc.amax(dim=-1)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    l = torch.exp(xc - shift[..., None]).sum(dim=-1)
    return m, l


def kd_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    temperature: float,
    alpha: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    compute: torch.dtype = torch.float64,
    naive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KD-1 loss and its gradient w.r.t. ``s``, unfused, in ``compute`` dtype, by autograd.

    ``loss = mean over rows with label != ignore_index of α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-α)·CE(s, y)``;
    with no labels every row counts and α = 1; no counted row gives loss 0. The oracle spells out
    ``Σ p_t (log p_t - log p_s)``; the ``naive`` form is what users write, ``F.kl_div(..., log_target=True)``
    and ``F.cross_entropy`` per row: the same function, rounded differently.
    """
    V = s.shape[-1]
    sc = s.detach().reshape(-1, V).to(compute).requires_grad_()
    tc = t.detach().reshape(-1, V).to(compute)
    T = float(temperature)
    with torch.enable_grad():
        log_ps = F.log_softmax(sc / T, dim=-1)
        log_pt = F.log_softmax(tc / T, dim=-1)
        if naive:
            kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(dim=-1)
        else:
            kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)
        if labels is None:
            rows, valid = T * T * kl, torch.ones(sc.shape[0], dtype=torch.bool, device=sc.device)
        else:
            y = labels.reshape(-1).to(sc.device)
            valid = y != ignore_index
            if naive:
                ce = F.cross_entropy(sc, torch.where(valid, y, 0), reduction="none")
            else:
                ce = -F.log_softmax(sc, dim=-1).gather(1, torch.where(valid, y, 0)[:, None])[:, 0]
            rows = alpha * T * T * kl + (1.0 - alpha) * ce
        loss = torch.where(valid, rows, torch.zeros_like(rows)).sum() / max(int(valid.sum()), 1)
        (ds,) = torch.autograd.grad(loss, sc)
    return loss.detach(), ds.reshape(s.shape)
