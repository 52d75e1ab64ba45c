"""Attention over packed variable-length sequences (SPEC's varlen clause) with the dense kernels.

``q [total_q, Hq, D]``, ``k, v [total_k, Hk, D]``; sequence ``s`` owns rows ``cu_seqlens_q[s] ..
cu_seqlens_q[s+1]`` of q and the matching rows of k and v, and is attended on its own with its own causal
and window alignment (``Sq``, ``Sk`` its own lengths). The tensors are handed to the kernels as one packed
batch entry ``[1, H, total, D]`` (a strided view, no copy); each program reads its sequence's start and
length from the prefix sums and stays inside them, so no sequence reads another's keys. ``lse`` is float32
``[Hq, total_q]``. Zero-length sequences launch programs that store nothing.
"""

from __future__ import annotations

import torch

from ..base import new_output
from .attention_bwd import BackwardConfig, launch_backward
from .attention_fwd import launch_forward
from .common import LaunchConfig
from .variants import KernelVariants


def packed(t: torch.Tensor) -> torch.Tensor:
    """``[total, H, D]`` as the kernels' ``[1, H, total, D]`` view (same storage)."""
    return t.permute(1, 0, 2).unsqueeze(0)


def attention_varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                             variants: KernelVariants, scale: float, config: LaunchConfig
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [total_q, Hq, D], lse float32 [Hq, total_q])`` of validated packed inputs; ``cu_seqlens_*``
    int32 on the inputs' device."""
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((q.shape[1], q.shape[0]), torch.float32, q.device)
    seqs = (cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k)
    launch_forward(packed(q), packed(k), packed(v), packed(out), lse.unsqueeze(0), variants, scale, config,
                   cu_seqlens=seqs)
    return out, lse


def attention_varlen_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                              lse: torch.Tensor, dout: torch.Tensor, cu_seqlens_q: torch.Tensor,
                              cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                              variants: KernelVariants, scale: float, config: BackwardConfig
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` shaped like the packed ``q, k, v``, recomputed from ``lse [Hq, total_q]``."""
    grads = (new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device),
             new_output(v.shape, v.dtype, v.device))
    seqs = (cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k)
    launch_backward(packed(q), packed(k), packed(v), packed(out), lse.contiguous().unsqueeze(0), packed(dout),
                    tuple(packed(g) for g in grads), variants, scale, config, cu_seqlens=seqs)
    return grads
