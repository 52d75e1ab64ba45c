"""Training with the Triton kernels: a ``torch.autograd.Function`` that saves only q, k, v, out, lse (GRAD-2)."""

from __future__ import annotations

import torch

from .. import validate
from ..base import CausalVariant
from .attention_bwd import attention_backward, backward_config
from .attention_fwd import attention_forward, forward_config
from .backend import triton_capabilities


class TritonAttention(torch.autograd.Function):
    """``out = softmax(scale * Q K^T) V`` (masked by ``causal``); backward recomputes from the saved ``lse``.

    ``apply(q, k, v, causal, scale)`` takes a resolved variant name (or None) and a float scale; use
    :func:`triton_attention` for the checked, user-facing call.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                causal: CausalVariant | None, scale: float) -> torch.Tensor:
        out, lse = attention_forward(q, k, v, causal, scale, forward_config(q.shape[-1], q.dtype, q.device))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, out, lse, dout, ctx.causal, ctx.scale,
                                        backward_config(q.shape[-1], q.dtype, q.device))
        return dq, dk, dv, None, None


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool | str | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """Differentiable attention ``[B,Hq,Sq,D]`` (GQA when K, V have fewer heads); ``causal=True`` is top-left."""
    caps = triton_capabilities(interpreter=q.device.type == "cpu")
    variant, scale_value = validate.attention_args(caps, q, k, v, causal=causal, scale=scale, backward=True)
    return TritonAttention.apply(q, k, v, variant, scale_value)
