"""Pieces every torch backend shares: masks, torch's kernel gates and the attention mixin (the row operations'
mixin is in :mod:`.row_ops`).

Outputs: ``out`` and the gradients are the tensors torch allocates (copying them into ``new_output``
buffers would add a full pass to every benchmark, and poisoning exists to catch unwritten elements of custom
kernels); ``lse``, ``delta``, statistics, the KD loss and the reduction value are written into
``new_output`` buffers.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend
from torch.torch_version import TorchVersion

from implementations import ops
from implementations.base import (
    AttentionCase,
    Backend,
    Case,
    CausalVariant,
    InvalidInputError,
    causal_offset,
    dtype_name,
    new_output,
    wide_dtype,
)
from implementations.ops import implementation

#: ``enable_gqa`` of ``F.scaled_dot_product_attention`` (and of ``SDPAParams``) exists from torch 2.5 on.
HAS_ENABLE_GQA = TorchVersion(torch.__version__) >= (2, 5)

LOW_AND_FULL = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
HALF = (torch.float16, torch.bfloat16)
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------
# Pieces shared by every torch backend


def expand_kv(x: torch.Tensor, Hq: int) -> torch.Tensor:
    """ATT-6: K or V ``[B, Hk, Sk, D]`` repeated so query head ``h`` reads KV head ``h // (Hq // Hk)``.

    Autograd through ``repeat_interleave`` sums the gradients of each group (GRAD-4).
    """
    return x if x.shape[1] == Hq else x.repeat_interleave(Hq // x.shape[1], dim=1)


def visible_mask(variant: CausalVariant, Sq: int, Sk: int, device: torch.device) -> torch.Tensor:
    """ATT-3 as a ``[Sq, Sk]`` bool mask: key j visible to query i iff ``j <= i + offset``."""
    offset = causal_offset(variant, Sq, Sk)
    return torch.ones(Sq, Sk, dtype=torch.bool, device=device).tril(diagonal=offset)


def additive_mask(variant: CausalVariant, Sq: int, Sk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive mask SDPA makes of a bool mask: 0 where visible, -inf elsewhere, in q's dtype."""
    mask = torch.zeros(Sq, Sk, dtype=dtype, device=device)
    return mask.masked_fill_(~visible_mask(variant, Sq, Sk, device), NEG_INF)


def lse_from_scores(q: torch.Tensor, k: torch.Tensor, variant: CausalVariant | None, scale: float,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """ATT-2 computed directly: ``logsumexp_j(scale · q_i·k_j + bias_ij)`` over visible keys, float32 (float64
    for float64), ``bias`` a float bias or a bool mask (SPEC VAR-6).

    Used where the kernel returns no lse. It materialises the ``[B, Hq, Sq, Sk]`` scores. A fully masked
    row gives -inf (``torch.logsumexp`` of all -inf).
    """
    wide = wide_dtype(q.dtype)
    scores = torch.matmul(q.to(wide), expand_kv(k, q.shape[1]).to(wide).transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + additive_bias(bias, wide)
    if variant is not None:
        scores = scores.masked_fill(~visible_mask(variant, q.shape[2], k.shape[2], q.device), NEG_INF)
    return torch.logsumexp(scores, dim=-1)


def additive_bias(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SPEC VAR-6's bias as SDPA's ``attn_mask`` takes it: a float bias in ``dtype``, a bool mask (True =
    visible) as 0 / -inf, as SDPA converts one."""
    if bias.dtype == torch.bool:
        return torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill_(~bias, NEG_INF)
    return bias.to(dtype)


def sdpa_mask(bias: torch.Tensor | None, variant: CausalVariant | None, q: torch.Tensor,
              k: torch.Tensor) -> torch.Tensor | None:
    """The additive ``attn_mask`` ``[B, Hq, Sq, Sk]`` (a broadcast view where it can be) of ``bias`` with the
    causal variant folded in, in q's dtype; None without a bias."""
    if bias is None:
        return None
    mask = additive_bias(bias, q.dtype)
    if variant is not None:
        mask = mask + additive_mask(variant, q.shape[2], k.shape[2], q.dtype, q.device)
    return torch.broadcast_to(mask, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))


def bias_argument(bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``forward``'s ``bias`` keyword, given only when there is a bias: a subclass that declares no "bias"
    variant (the boundary refuses one) keeps the ``forward`` signature without it."""
    return {} if bias is None else {"bias": bias}


def lse_as_b_h_sq(lse: object, B: int, H: int, Sq: int) -> torch.Tensor | None:
    """A kernel's logsumexp as ``[B, H, Sq]``, or None when its shape is not one we know.

    Known shapes: ``[B, H, Sq]`` (flash, CPU flash), ``[B, H, >= Sq]`` (efficient pads Sq to a multiple of
    32), ``[B, H, Sq, 1]`` (cuDNN).
    """
    if not isinstance(lse, torch.Tensor):
        return None
    if lse.dim() == 4 and lse.shape[-1] == 1:
        lse = lse[..., 0]
    if lse.dim() == 3 and tuple(lse.shape[:2]) == (B, H) and lse.shape[2] >= Sq:
        return lse[..., :Sq]
    return None


def sdpa_params(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, enable_gqa: bool) -> object:
    """``torch.backends.cuda.SDPAParams`` for the gate functions (torch < 2.5 has no ``enable_gqa`` field)."""
    if HAS_ENABLE_GQA:
        return torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, is_causal, enable_gqa)
    return torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, is_causal)


def torch_refusals(gate: Callable[..., bool], params: object) -> list[str]:
    """Why torch's gate ``can_use_*_attention`` refuses ``params`` (its debug warnings), or [] if it accepts."""
    if gate(params, False):
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gate(params, True)
    said = [str(w.message).strip() for w in caught]
    return [f"torch refuses it: {s}" for s in said] or ["torch refuses it (no reason given)"]


# --------------------------------------------------------------------------------------------------
# Attention through torch, and the operations every torch backend shares


class TorchAttention(Backend):
    """Attention, its backward by autograd, and ``delta``; subclasses provide ``forward`` for one kernel."""

    #: the SDPA kernel this backend forces (None: torch's own choice)
    kernel: SDPBackend | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(out, lse or None)`` from the kernel, differentiable w.r.t. q, k, v; None: compute lse. ``bias``
        (SPEC VAR-6) only where the backend declares the "bias" variant."""
        raise NotImplementedError

    def kernel_reasons(self, case: AttentionCase, backward: bool) -> list[str]:
        """Constraints of the kernel that capabilities cannot express (readable; no device access)."""
        return []

    def device_refusals(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        variant: CausalVariant | None) -> list[str]:
        """torch's own refusals for these tensors (CUDA kernels ask ``can_use_*_attention``)."""
        return []

    def gate_tensors(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What ``device_refusals`` is asked with; the inputs themselves unless a kernel says otherwise."""
        return q, k, v

    def record(self, note: str) -> None:
        """Add a fact learnt at run time (e.g. an lse fallback) to ``capabilities.notes``, once."""
        if note not in self.capabilities.notes:
            self.capabilities = dataclasses.replace(self.capabilities, notes=self.capabilities.notes + (note,))

    def not_supported_reasons(self, op: str, case: Case) -> list[str]:
        reasons = super().not_supported_reasons(op, case)
        if reasons or op not in ("attention", "attention_backward") or not isinstance(case, AttentionCase):
            return reasons
        return self.kernel_reasons(case, op == "attention_backward") or self.case_refusals(case, op)

    def case_refusals(self, case: AttentionCase, op: str) -> list[str]:
        """``device_refusals`` for a case, asked with empty tensors of its shape; [] when it cannot be asked."""
        return []

    def refuse_unsupported(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           variant: CausalVariant | None, backward: bool) -> None:
        """Raise ``InvalidInputError`` rather than run a case the kernel does not support (ATT-11)."""
        case = AttentionCase(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3], q.dtype,
                             q.device.type, variant)
        reasons = self.kernel_reasons(case, backward) or self.device_refusals(
            *self.gate_tensors(q, k, v, backward), variant)
        if reasons:
            raise InvalidInputError(f"{self.name} does not support {case.label} ({dtype_name(q.dtype)}): "
                                    + "; ".join(reasons))

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """ATT-1..3, VAR-6: ``out = softmax(scale · QKᵀ + bias + mask) V`` and ``lse`` ([B, Hq, Sq],
        float32/float64).

        Fully masked rows are returned as the kernel leaves them (ATT-4 records what torch does).
        """
        q, k, v, variant, scale, bias = inp.q, inp.k, inp.v, inp.causal, inp.scale, inp.variants.bias
        self.refuse_unsupported(q, k, v, variant, backward=False)
        with torch.no_grad():
            out, lse = self.forward(q, k, v, variant, scale, need_lse=True, **bias_argument(bias))
            if lse is None:
                lse = lse_from_scores(q, k, variant, scale, bias)
        lse_out = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        lse_out.copy_(lse)
        return out, lse_out

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1/4/5 by autograd: the forward is recomputed through the same kernel with ``requires_grad``,
        then differentiated with ``dout`` (the kernel's own backward). ``out`` and ``lse`` are validated,
        not used; timings of this call include one forward (benchmarks time the prepared calls instead).
        """
        leaves, recomputed, _ = self.recorded_forward(inp)
        dq, dk, dv = self.gradients(recomputed, leaves, inp.dout)
        return dq, dk, dv

    def prepare_attention_backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                                   lse: torch.Tensor, dout: torch.Tensor, **options: object
                                   ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The backward alone, for benchmarks (docs/backend-contract.md): takes ``attention_backward``'s
        arguments (``options``: its keywords), checked as it checks them, runs the forward once through the
        kernel with autograd (here, untimed) and returns a call that computes only ``dq, dk, dv`` from that
        graph with ``dout`` (the kernel's own backward; the graph is retained, so the call can be repeated):
        the values ``attention_backward`` returns."""
        inp = ops.OPS["attention_backward"].validate(self.capabilities, q, k, v, out, lse, dout, **options)
        leaves, recomputed, _ = self.recorded_forward(inp)

        def backward() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            dq, dk, dv = self.gradients(recomputed, leaves, inp.dout, retain_graph=True)
            return dq, dk, dv

        return backward

    def prepare_attention_forward_backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                           out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                                           **options: object) -> Callable[[], tuple[torch.Tensor, ...]]:
        """A forward and its backward with no forward recomputed, for benchmarks (docs/backend-contract.md):
        ``attention_backward``'s arguments, checked once, here; each call of the returned call runs the forward
        through the kernel with autograd and differentiates it with ``dout``: ``out, lse, dq, dk, dv``, as
        ``attention`` then ``attention_backward`` return them."""
        inp = ops.OPS["attention_backward"].validate(self.capabilities, q, k, v, out, lse, dout, **options)

        def forward_backward() -> tuple[torch.Tensor, ...]:
            leaves, out, lse = self.recorded_forward(inp, need_lse=True)
            lse_out = new_output(out.shape[:3], wide_dtype(out.dtype), out.device)
            lse_out.copy_(lse)
            return (out.detach(), lse_out, *self.gradients(out, leaves, inp.dout))

        return forward_backward

    def gradients(self, out: torch.Tensor, leaves: list[torch.Tensor], dout: torch.Tensor, *,
                  retain_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dq, dk, dv``: the recorded forward ``out`` differentiated with ``dout`` (the kernel's own backward)."""
        dq, dk, dv = torch.autograd.grad(out, leaves, dout, retain_graph=retain_graph)
        return dq, dk, dv

    def recorded_forward(self, inp: ops.BackwardInputs, need_lse: bool = False
                         ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """``(leaves, out, lse)``: the forward of a backward call through the kernel, recorded by autograd, on
        leaves detached from ``q, k, v`` (refused first where the kernel's backward does not support the case);
        lse (not recorded) only when asked for."""
        leaves = [x.detach().requires_grad_() for x in (inp.q, inp.k, inp.v)]
        self.refuse_unsupported(*leaves, inp.causal, backward=True)
        bias = inp.variants.bias
        with torch.enable_grad():
            out, lse = self.forward(*leaves, inp.causal, inp.scale, need_lse=need_lse, **bias_argument(bias))
        if need_lse and lse is None:
            with torch.no_grad():
                lse = lse_from_scores(inp.q, inp.k, inp.causal, inp.scale, bias)
        return leaves, out, None if lse is None else lse.detach()

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """GRAD-3: ``delta = rowsum(dout ∘ out)`` ``[B, Hq, Sq]`` in float32 (float64 for float64)."""
        out, dout = inp.out, inp.dout
        wide = wide_dtype(out.dtype)
        delta = new_output(out.shape[:3], wide, out.device)
        torch.sum(dout.to(wide) * out.to(wide), dim=-1, out=delta)
        return delta


#: the backward's note of every SDPA backend
BACKWARD_NOTE = (
    "attention_backward: autograd through the same aten call, the forward recomputed inside the call (out and lse "
    "are validated, not used), so timings of that call include one forward; attnspec bench times the prepared "
    "calls instead: prepare_attention_backward's (the gradients alone, from a forward recorded once, untimed) and "
    "prepare_attention_forward_backward's (one forward, then its backward)")
