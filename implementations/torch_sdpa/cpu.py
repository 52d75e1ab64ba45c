"""The ``torch`` backend: SDPA's CPU path.

Facts observed with torch 2.13 on the CPU (re-observed at construction where the notes say so):

- the CPU flash kernel takes float32, float64, bfloat16 and float16, any head dim, Hk < Hq directly (GQA),
  ``is_causal`` (top-left, also for Sq != Sk), ``scale``, and an additive ``attn_mask`` in q's dtype
  (a bool mask is refused by the op; SDPA converts it first). Its lse is float32 ([B, H, Sq]), float64 for
  float64 inputs.
- bottom-right causal: ``causal_lower_right(Sq, Sk)`` is materialised by torch as an [Sq, Sk] bool mask,
  converted to an additive mask in q's dtype, and autograd saves that [Sq, Sk] tensor for backward. The
  no-mask and top-left paths save only q, k, v, out, lse (checked with ``saved_tensors_hooks``).
- fully masked rows (bottom-right, Sq > Sk) and ``is_causal`` with a negative ``scale``: torch's results
  deviate from SPEC.md there; they are returned as torch computes them, so that the suite records them, and
  each deviation is written with its finding in ``conformance/xfails/torch.txt``.
- backward is bit-identical over repeats and over 1-3 threads: the CPU flash backward parallelises over
  (batch, head) pairs only, each processed sequentially.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from implementations.base import (
    Capabilities,
    CausalVariant,
)
from implementations.torch_sdpa.common import (
    BACKWARD_NOTE,
    HAS_ENABLE_GQA,
    LOW_AND_FULL,
    TorchAttention,
    additive_mask,
    expand_kv,
    lse_from_scores,
    sdpa_mask,
)
from implementations.torch_sdpa.row_ops import OPS_NOTES, TorchOps

_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class TorchCPUBackend(TorchAttention, TorchOps):
    """``F.scaled_dot_product_attention`` on the CPU; lse from the CPU flash op that SDPA dispatches to."""

    name = "torch"
    description = "torch SDPA on the CPU (flash kernel, out and lse from one aten call)"

    def __init__(self) -> None:
        dtypes = tuple(d for d in LOW_AND_FULL if self._runs(d))
        self.capabilities = Capabilities(
            devices=("cpu",),
            dtypes=dtypes,
            backward_dtypes=dtypes,
            head_dims=(1, 512),
            memory="quadratic",
            saves="scores",
            deterministic=True,
            stats_dtypes=LOW_AND_FULL,
            kd_dtypes=LOW_AND_FULL,
            reduce_dtypes=(torch.float32,),
            attention_variants=frozenset({"bias"}),
            notes=(
                f"torch {torch.__version__}; {torch.get_num_threads()} threads",
                "variants: bias only (SPEC VAR-6), as SDPA's additive attn_mask in q's dtype, broadcast to "
                "[B, Hq, Sq, Sk]; a bool mask is converted to 0 / -inf first (as SDPA does) and the causal mask "
                "is added to it (is_causal is not combined with a mask); window, softcap and ALiBi are not "
                "SDPA arguments",
                self._lse_source(),
                "bottom_right with Sq != Sk: torch materialises causal_lower_right as an [Sq, Sk] additive mask "
                "in q's dtype (once per call, shared over B and H) and autograd saves it; hence memory="
                "'quadratic' and saves='scores'. Without a mask (no causal, top_left, bottom_right with "
                "Sq == Sk) the kernel is linear (per-thread [q_split, kv_split] blocks) and saves only q, k, v, "
                "out, lse",
                self._masked_rows(),
                "is_causal (top_left) with a negative scale: returned as torch computes it (the finding, ATT-8: "
                "conformance/xfails/torch.txt)",
                BACKWARD_NOTE,
                "deterministic: the CPU flash backward parallelises over (batch, head) pairs, each summed "
                "sequentially; bit-identical over 20 repeats and 1-3 threads with torch 2.13",
                "head dims: the CPU kernel has no limit; declared up to 512, the largest checked",
                "out and gradients are torch's own tensors (not new_output buffers); lse, delta, statistics, "
                "loss and reduction value are written into new_output buffers",
            ) + OPS_NOTES,
        )

    # -- facts established at construction --------------------------------------------------------

    def _runs(self, dtype: torch.dtype) -> bool:
        """Whether forward and backward run on this torch for ``dtype`` (a tiny GQA top-left case)."""
        q, k, v = (torch.randn(1, h, 5, 8).to(dtype).requires_grad_() for h in (2, 1, 1))
        try:
            out, _ = self.forward(q, k, v, "top_left", 0.3, need_lse=False)
            grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        except (RuntimeError, TypeError, NotImplementedError):
            return False
        return bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)

    def _lse_source(self) -> str:
        q = torch.randn(1, 2, 4, 8)
        if _CPU_FLASH is not None and self._flash_chosen(q, q, q, None, False, 0.3, False):
            return ("lse: from aten._scaled_dot_product_flash_attention_for_cpu, the kernel torch's selector "
                    "(torch._fused_sdp_choice) picks for SDPA; out and lse come from that one call and out is "
                    "bit-identical to F.scaled_dot_product_attention's. Where torch would pick its math path "
                    "instead (e.g. last-dim stride != 1), out is SDPA's and lse is computed from the float32 "
                    "scores with torch.logsumexp (materialising Sq x Sk)")
        return ("lse: computed from the float32 scores with torch.logsumexp (materialising Sq x Sk): this torch "
                "has no CPU flash op with lse, or does not choose it; out is F.scaled_dot_product_attention's")

    def _masked_rows(self) -> str:
        q, k, v = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
        with torch.no_grad():
            out, lse = self.forward(q, k, v, "bottom_right", 0.3, need_lse=True)
            if lse is None:
                lse = lse_from_scores(q, k, "bottom_right", 0.3)
        row = out[0, 0, 0]
        what = "NaN" if bool(row.isnan().any()) else ("0" if bool((row == 0).all()) else "nonzero")
        return (f"fully masked rows (bottom_right, Sq > Sk), observed at construction: out rows {what}, lse "
                f"{float(lse[0, 0, 0])} (SPEC ATT-4 wants 0 and -inf); returned as torch gives them "
                "(findings: conformance/xfails/torch.txt)")

    @staticmethod
    def _flash_chosen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      is_causal: bool, scale: float, gqa: bool) -> bool:
        """Whether torch's SDPA selector picks the CPU flash kernel for these arguments."""
        extra = {"enable_gqa": gqa} if HAS_ENABLE_GQA else {}
        try:
            choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, is_causal, scale=scale, **extra)
        except (RuntimeError, TypeError):
            return False
        return int(choice) == int(SDPBackend.FLASH_ATTENTION)

    # -- the kernel --------------------------------------------------------------------------------

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SDPA's CPU path, as ``F.scaled_dot_product_attention`` takes it.

        Bottom-right with Sq == Sk is top-left (torch's ``CausalBias`` does the same); with Sq != Sk the
        mask is materialised as torch does. A bias (VAR-6) is SDPA's additive ``attn_mask`` in q's dtype (a bool
        mask converted to 0 / -inf, as SDPA does), the causal mask added to it. GQA is passed through
        (``enable_gqa``) or, before torch 2.5, K and V are repeated per group.
        """
        Sq, Sk = q.shape[2], k.shape[2]
        gqa = k.shape[1] != q.shape[1]
        if gqa and not HAS_ENABLE_GQA:
            k, v, gqa = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1]), False
        is_causal = bias is None and (variant == "top_left" or (variant == "bottom_right" and Sq == Sk))
        mask = sdpa_mask(bias, variant, q, k)
        if mask is None and variant and not is_causal:
            mask = additive_mask("bottom_right", Sq, Sk, q.dtype, q.device)
        if _CPU_FLASH is not None and self._flash_chosen(q, k, v, mask, is_causal, scale, gqa):
            out, lse = _CPU_FLASH(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
            return out, lse
        extra = {"enable_gqa": True} if gqa else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **extra)
        return out, (lse_from_scores(q, k, variant, scale, bias) if need_lse else None)


# --------------------------------------------------------------------------------------------------
# CUDA: one backend per SDPA kernel
