"""``attention_varlen_backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
*, causal=None, scale=None, window=None, softcap=None) -> (dq, dk, dv)`` (SPEC VLEN).

The packed inputs of :mod:`~implementations.ops.attention_varlen` plus its ``out [total_q, Hq, D]`` and
``lse [Hq, total_q]`` and the incoming gradient ``dout`` (like ``out``). Returns ``dq, dk, dv`` shaped and
typed like ``q, k, v``: each sequence's gradients are those of its own dense attention (GQA sums over the
query heads sharing a KV head). Rows of a zero-length or fully masked sequence get 0.

Cost: ``2.5 ×`` the forward's FLOPs (five products of the forward's two).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant, dtype_name
from implementations.ops.attention_backward import naive as dense_naive
from implementations.ops.attention_backward import oracle as dense_oracle
from implementations.ops.attention_varlen import VarlenInputs, check_packed
from implementations.ops.spec import Expected, OpSpec


@dataclass(frozen=True)
class VarlenBackwardInputs(VarlenInputs):
    """A validated varlen backward call: the forward's record plus ``out``, ``lse`` and ``dout``."""

    out: torch.Tensor
    lse: torch.Tensor
    dout: torch.Tensor


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
          lse: torch.Tensor, dout: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
          max_seqlen_q: int, max_seqlen_k: int, *, causal: bool | str | None = None, scale: float | None = None,
          window: tuple[int, int] | None = None, softcap: float | None = None) -> VarlenBackwardInputs:
    """The boundary check of the varlen backward: the forward's, and ``out``, ``dout`` like q, ``lse`` [Hq, total_q]."""
    fwd = check_packed(caps, "attention_varlen_backward", caps.varlen_backward_dtypes, q, k, v, cu_seqlens_q,
                       cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale, window=window,
                       softcap=softcap)
    for name, x in (("out", out), ("dout", dout)):
        if not isinstance(x, torch.Tensor) or x.shape != q.shape or x.dtype != q.dtype or x.device != q.device:
            raise validate.InvalidInputError(f"{name} must be a tensor like q ({tuple(q.shape)}, "
                                             f"{dtype_name(q.dtype)}, {q.device})")
    want = (q.shape[1], q.shape[0])
    if (not isinstance(lse, torch.Tensor) or tuple(lse.shape) != want or lse.device != q.device
            or lse.dtype not in (torch.float32, torch.float64)):
        raise validate.InvalidInputError(f"lse must be float32 or float64 [Hq, total_q] = {want} on {q.device}")
    return VarlenBackwardInputs(**{f.name: getattr(fwd, f.name) for f in fields(fwd)}, out=out, lse=lse, dout=dout)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    return [Expected.like("dq", inputs["q"]), Expected.like("dk", inputs["k"]), Expected.like("dv", inputs["v"])]


# ------------------------------------------------------------------------------------------------
# Oracle: each sequence's dense gradients (the dense backward's oracle)


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1)[None]


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, cu_q: torch.Tensor,
         cu_k: torch.Tensor, *, causal: CausalVariant | None, scale: float, dtype: torch.dtype | None,
         **variants: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` of every sequence's dense attention (0 where a sequence has no key or no query), on the CPU:
    the float64 oracle (``dtype`` None) or the naive form in ``dtype``."""
    grads = tuple(torch.zeros(x.shape, dtype=dtype or torch.float64) for x in (q, k, v))
    for b in range(len(cu_q) - 1):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.stop == rows.start or keys.stop == keys.start:
            continue
        dense = (_dense(q[rows]), _dense(k[keys]), _dense(v[keys]), _dense(dout[rows]))
        got = (dense_oracle(*dense, causal=causal, scale=scale, **variants) if dtype is None
               else dense_naive(*dense, causal=causal, scale=scale, dtype=dtype, **variants))
        for dst, where, g in zip(grads, (rows, keys, keys), got):
            dst[where] = g[0].transpose(0, 1).cpu()
    return grads  # type: ignore[return-value]


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, cu_q: torch.Tensor,
           cu_k: torch.Tensor, *, causal: CausalVariant | None, scale: float,
           **variants: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float64 oracle of VLEN-4, on the CPU."""
    return _run(q, k, v, dout, cu_q, cu_k, causal=causal, scale=scale, dtype=None, **variants)


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, cu_q: torch.Tensor,
          cu_k: torch.Tensor, *, causal: CausalVariant | None, scale: float, dtype: torch.dtype,
          **variants: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The naive form in ``dtype``, sequence by sequence."""
    return _run(q, k, v, dout, cu_q, cu_k, causal=causal, scale=scale, dtype=dtype, **variants)


SPEC: OpSpec[VarlenBackwardInputs] = OpSpec(
    name="attention_varlen_backward",
    signature="attention_varlen_backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, "
              "max_seqlen_k, *, causal=None, scale=None, window=None, softcap=None) -> (dq, dk, dv)",
    inputs=("q", "k", "v", "out", "lse", "dout", "cu_seqlens_q", "cu_seqlens_k"), outputs=("dq", "dk", "dv"),
    declared_dtypes=lambda caps: caps.varlen_backward_dtypes, validate=check, expected=expected, oracle=oracle,
    naive=naive, multipliers={"dq": 3.0, "dk": 3.0, "dv": 3.0},
)
