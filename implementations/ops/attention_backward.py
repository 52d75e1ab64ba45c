"""``attention_backward(q, k, v, out, lse, dout, *, causal=None, scale=None, tiles=None, window=None,
softcap=None, bias=None, alibi_slopes=None) -> (dq, dk, dv)`` (SPEC GRAD, VAR).

The inputs of the forward plus its ``out`` and ``lse`` and the incoming gradient ``dout`` (like ``out``).
Returns ``dq, dk, dv`` shaped and typed like ``q, k, v``; with GQA, dk and dv are summed over the query heads
sharing a KV head. The variants (SPEC VAR) as in the forward; the bias gets no gradient. Uses only these
tensors (recomputation from lse, GRAD-2).

Cost: ``2.5 ×`` the forward's FLOPs: ``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``dQ = dS K``, ``dK = dSᵀ Q`` and the
recomputed ``Q Kᵀ`` are five products of ``2·Sq·Sk·D`` where the forward has two.

Oracle: ``dq, dk, dv`` of the forward's materialised float64 definition by torch autograd (GQA sums come from
the expanded KV heads), in chunks of query rows; naive: the same in dtype ``t``.

Benchmarks: ``attention_backward`` (the backend's own forward runs once, untimed, to give the ``out`` and
``lse`` its backward reads; a backend offering ``prepare_attention_backward`` is timed on the backward alone
that it prepares) and ``attention_fwd_bwd`` (a forward then a backward, ``3.5 ×`` the forward's
FLOPs; a backend offering ``prepare_attention_forward_backward`` is timed on its call, one forward then its
backward), both over the forward's attention table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant
from implementations.ops import attention as fwd
from implementations.ops.attention import forward_flops, scores_shape
from implementations.ops.spec import Expected, OpSpec
from implementations.ops.workload import AttentionWorkload, BenchOp, Reference


@dataclass(frozen=True, kw_only=True)
class BackwardInputs(fwd.AttentionInputs):
    """A validated backward call: the forward's record plus the forward's ``out``, ``lse`` and ``dout``."""

    out: torch.Tensor
    lse: torch.Tensor
    dout: torch.Tensor


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
          lse: torch.Tensor, dout: torch.Tensor, *, causal: bool | str | None = None, scale: float | None = None,
          tiles: tuple[int, int] | None = None, window: tuple[int, int] | None = None,
          softcap: float | None = None, bias: torch.Tensor | None = None,
          alibi_slopes: torch.Tensor | None = None) -> BackwardInputs:
    """The boundary check of the backward (validate.backward_args, validate.variant_args)."""
    variant, resolved = validate.backward_args(caps, q, k, v, out, lse, dout, causal=causal, scale=scale,
                                               tiles=tiles)
    variants = validate.variant_args(caps, scores_shape(q, k), q.device, window=window, softcap=softcap,
                                     bias=bias, alibi_slopes=alibi_slopes)
    return BackwardInputs(q, k, v, variant, resolved, tuple(tiles) if tiles is not None else None, variants,
                          out=out, lse=lse, dout=dout)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    return [Expected.like("dq", inputs["q"]), Expected.like("dk", inputs["k"]), Expected.like("dv", inputs["v"])]


def backward_flops(B: int, Hq: int, Sq: int, Sk: int, D: int, causal: bool) -> int:
    """``2.5 ×`` :func:`~implementations.ops.attention.forward_flops`."""
    return forward_flops(B, Hq, Sq, Sk, D, causal) * 5 // 2


# ------------------------------------------------------------------------------------------------
# Oracle


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, *, causal: CausalVariant | None,
          scale: float, dtype: torch.dtype, naive: bool = True,
          **variants: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` of :func:`~implementations.ops.attention.materialised` in ``dtype`` by autograd
    (``naive=False``: the oracle's formula, in ``dtype``; ``variants`` as its)."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    with torch.enable_grad():
        out, _ = fwd.materialised(*leaves, causal=causal, scale=scale, compute=dtype, naive=naive, **variants)
        grads = torch.autograd.grad(out, leaves, dout.to(dtype))
    return grads[0], grads[1], grads[2]


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, *, causal: CausalVariant | None,
           scale: float, **variants: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float64 oracle of the gradients (GRAD-1), by autograd, where the forward's oracle runs, in chunks of
    query rows: a chunk's rows give its dq rows and add their share to dk and dv; returned on the CPU."""
    dev = fwd.oracle_device(q, k)
    kd, vd = (x.detach().to(dev, torch.float64).requires_grad_() for x in (k, v))
    dqs, dk, dv = [], torch.zeros_like(kd), torch.zeros_like(vd)
    for first, stop in fwd.query_chunks(q, k):
        qc = q[:, :, first:stop].detach().to(dev, torch.float64).requires_grad_()
        with torch.enable_grad():
            out, _ = fwd.materialised(qc, kd, vd, causal=causal, scale=scale, compute=torch.float64, naive=False,
                                      rows=(first, q.shape[2]), **variants)
            gq, gk, gv = torch.autograd.grad(out, (qc, kd, vd), dout[:, :, first:stop].to(dev, torch.float64))
        dqs.append(gq.cpu())
        dk += gk
        dv += gv
    return torch.cat(dqs, dim=2), dk.cpu(), dv.cpu()


# ------------------------------------------------------------------------------------------------
# Benchmarks


#: the backend methods that give the backward alone, and a forward then its backward, with no forward
#: recomputed, for backends whose ``attention_backward`` recomputes it through autograd (docs/backend-contract.md
#: "Prepared calls, for benchmarks")
PREPARE_BACKWARD = "prepare_attention_backward"
PREPARE_FORWARD_BACKWARD = "prepare_attention_forward_backward"


def backward_call(backend: Any, w: AttentionWorkload,
                  inputs: dict[str, torch.Tensor]) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The backend's backward, on the ``out`` and ``lse`` of one untimed call of its own forward: its prepared
    backward alone (``prepare_attention_backward``, which runs its forward once more, untimed) where it offers
    one, else its ``attention_backward``."""
    out, lse = fwd.forward_call(backend, w, inputs)()
    causal = True if w.causal else None
    q, k, v, dout = inputs["q"], inputs["k"], inputs["v"], inputs["dout"]
    if w.bench.prepares(backend):
        return getattr(backend, PREPARE_BACKWARD)(q, k, v, out, lse, dout, causal=causal, scale=None)
    return lambda: backend.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=None)


def forward_backward_call(backend: Any, w: AttentionWorkload,
                          inputs: dict[str, torch.Tensor]) -> Callable[[], tuple[torch.Tensor, ...]]:
    """The backend's forward, then its backward on what the forward returned; where the backend offers
    ``prepare_attention_forward_backward``, its call (prepared on the ``out`` and ``lse`` of one untimed forward),
    which runs the forward once and differentiates it."""
    forward = fwd.forward_call(backend, w, inputs)
    causal = True if w.causal else None
    q, k, v, dout = inputs["q"], inputs["k"], inputs["v"], inputs["dout"]
    if w.bench.prepares(backend):
        out, lse = forward()
        return getattr(backend, PREPARE_FORWARD_BACKWARD)(q, k, v, out, lse, dout, causal=causal, scale=None)

    def call() -> tuple[torch.Tensor, ...]:
        out, lse = forward()
        return (out, lse, *backend.attention_backward(q, k, v, out, lse, dout, causal=causal, scale=None))

    return call


def backward_reference(w: AttentionWorkload, inputs: dict[str, torch.Tensor]) -> dict[str, Reference]:
    """``dq, dk, dv`` of the sampled heads by the float64 oracle."""
    index, (q, k, v, dout) = fwd.sampled_heads(w, inputs, ("q", "k", "v", "dout"))
    grads = oracle(q, k, v, dout, causal="top_left" if w.causal else None, scale=w.scale)
    return {name: Reference(index, g[0]) for name, g in zip(("dq", "dk", "dv"), grads)}


def _backward_flops(w: AttentionWorkload) -> int:
    """The backward FLOPs of ``w``."""
    return backward_flops(w.B, w.H, w.S, w.S, w.D, w.causal)


BENCH: BenchOp[AttentionWorkload] = BenchOp(
    name="attention_backward", asv_class="AttentionBackward", calls=("attention", "attention_backward"),
    outputs=("dq", "dk", "dv"),
    table=fwd.attention_table, label=fwd.attention_label, describe=fwd.attention_describe,
    inputs=fwd.attention_inputs, bind=backward_call, reference=backward_reference, baselines=fwd.BASELINES,
    flops=_backward_flops, reference_rows=fwd.REFERENCE_ROWS, prepared=PREPARE_BACKWARD)
#: a forward then a backward: a benchmark notion only (the contract has no such operation)
FORWARD_BACKWARD: BenchOp[AttentionWorkload] = BenchOp(
    name="attention_fwd_bwd", asv_class="AttentionForwardBackward", calls=("attention", "attention_backward"),
    outputs=("out", "lse", "dq", "dk", "dv"),
    table=fwd.attention_table, label=fwd.attention_label, describe=fwd.attention_describe,
    inputs=fwd.attention_inputs, bind=forward_backward_call,
    reference=lambda w, inputs: fwd.forward_reference(w, inputs) | backward_reference(w, inputs),
    baselines=fwd.BASELINES, flops=lambda w: fwd.workload_flops(w) + _backward_flops(w),
    reference_rows=fwd.REFERENCE_ROWS, prepared=PREPARE_FORWARD_BACKWARD)


SPEC: OpSpec[BackwardInputs] = OpSpec(
    name="attention_backward",
    signature="attention_backward(q, k, v, out, lse, dout, *, causal=None, scale=None, tiles=None, window=None, "
              "softcap=None, bias=None, alibi_slopes=None) -> (dq, dk, dv)",
    inputs=("q", "k", "v", "out", "lse", "dout"), outputs=("dq", "dk", "dv"),
    declared_dtypes=lambda caps: caps.backward_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"dq": 3.0, "dk": 3.0, "dv": 3.0}, benchmarks=(BENCH, FORWARD_BACKWARD),
)
