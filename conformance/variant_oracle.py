"""The oracles and naive forms of the packed, paged and fp8 operations (SPEC VLEN, DEC, FP8), built on the dense
definition (``implementations.ops.attention``): each sequence of a packed batch, each paged sequence's gathered keys,
or the dequantized fp8 inputs, as a dense problem. ``dtype`` None gives the float64 oracle; a dtype gives the
naive form in it."""

from __future__ import annotations

import torch

from implementations.base import CausalVariant
from implementations.ops import attention as attention_op
from implementations.ops import attention_backward as backward_op
from implementations.ops.exact import stat_dtype


def _dense(x: torch.Tensor) -> torch.Tensor:
    """Packed rows ``[S, H, D]`` of one sequence as a batch of one ``[1, H, S, D]``."""
    return x.transpose(0, 1)[None]


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: CausalVariant | None, scale: float,
             dtype: torch.dtype | None, **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    if dtype is None:
        return attention_op.oracle(q, k, v, causal=causal, scale=scale, **variants)
    with torch.no_grad():
        return attention_op.materialised(q, k, v, causal=causal, scale=scale, compute=dtype, **variants)


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, *,
           causal: CausalVariant | None, scale: float, dtype: torch.dtype | None = None,
           **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [total_q, Hq, D]`` and ``lse [Hq, total_q]``: each sequence's dense attention (VLEN-1), on the CPU."""
    wide = torch.float64 if dtype is None else stat_dtype(dtype)
    out = torch.zeros(q.shape, dtype=dtype or torch.float64)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=wide)
    for b in range(len(cu_q) - 1):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.stop > rows.start and keys.stop > keys.start:
            o, l = _forward(*(_dense(x[s]) for x, s in ((q, rows), (k, keys), (v, keys))), causal, scale, dtype,
                            **variants)
            out[rows], lse[:, rows] = o[0].transpose(0, 1).cpu(), l[0].cpu()
    return out, lse


def varlen_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, cu_q: torch.Tensor,
                 cu_k: torch.Tensor, *, causal: CausalVariant | None, scale: float, dtype: torch.dtype | None = None,
                 **variants: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` of :func:`varlen`: each sequence's dense gradients (VLEN-4); 0 where no key or query is."""
    grads = tuple(torch.zeros(x.shape, dtype=dtype or torch.float64) for x in (q, k, v))
    for b in range(len(cu_q) - 1):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.stop == rows.start or keys.stop == keys.start:
            continue
        dense = (_dense(q[rows]), _dense(k[keys]), _dense(v[keys]), _dense(dout[rows]))
        if dtype is None:
            got = backward_op.oracle(*dense, causal=causal, scale=scale, **variants)
        else:
            got = backward_op.naive(*dense, causal=causal, scale=scale, dtype=dtype, **variants)
        for dst, where, g in zip(grads, (rows, keys, keys), got):
            dst[where] = g[0].transpose(0, 1).cpu()
    return grads  # type: ignore[return-value]


def decode(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, block_table: torch.Tensor,
           kv_lens: torch.Tensor, *, scale: float,
           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [B, Hq, Sq, D]``, ``lse [B, Hq, Sq]``: key j of sequence b is row ``j % page_size`` of page
    ``block_table[b, j // page_size]``; bottom-right causal over its ``kv_lens[b]`` keys (DEC-1)."""
    page = k_pages.shape[1]
    outs, lses = [], []
    for b in range(q.shape[0]):
        n = int(kv_lens[b])
        pages = block_table[b, : -(-n // page)].long()
        k, v = (x[pages].flatten(0, 1)[:n].transpose(0, 1)[None] for x in (k_pages, v_pages))
        o, l = _forward(q[b:b + 1], k, v, "bottom_right", scale, dtype)
        outs.append(o.cpu())
        lses.append(l.cpu())
    return torch.cat(outs), torch.cat(lses)


def fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor, k_descale: torch.Tensor,
        v_descale: torch.Tensor, *, causal: CausalVariant | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle of FP8-1: attention on ``descale · float(x)``."""
    deq = (x.double() * float(d) for x, d in ((q, q_descale), (k, k_descale), (v, v_descale)))
    return attention_op.oracle(*deq, causal=causal, scale=scale)


def fp8_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_descale: torch.Tensor, k_descale: torch.Tensor,
              v_descale: torch.Tensor, *, causal: CausalVariant | None,
              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8-1's naive form, as fp8 kernels compute: ``Q Kᵀ`` of the dequantized values and the softmax in
    float32, P rounded to e4m3 before ``P V`` (the tensor cores' input) with V's descale applied after, ``P V``
    in float32, out rounded to bfloat16."""
    qd, kd = q.float() * q_descale, k.float() * k_descale
    with torch.no_grad():
        out, lse = attention_op.materialised(qd, kd, v.float(), causal=causal, scale=scale, compute=torch.float32,
                                    p_round=q.dtype)
    return (out * v_descale).to(torch.bfloat16), lse
