"""One backend per SDPA kernel on CUDA: ``torch-flash``, ``torch-efficient``, ``torch-cudnn``, ``torch-math``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from implementations.base import (
    AttentionCase,
    Capabilities,
    CausalVariant,
)
from implementations.torch_sdpa.common import (
    BACKWARD_NOTE,
    HALF,
    HAS_ENABLE_GQA,
    LOW_AND_FULL,
    TorchAttention,
    expand_kv,
    lse_as_b_h_sq,
    lse_from_scores,
    sdpa_mask,
    sdpa_params,
    torch_refusals,
)
from implementations.torch_sdpa.row_ops import OPS_NOTES, TorchOps


def aten_op(name: str) -> Callable[..., object] | None:
    """``torch.ops.aten.<name>`` or None when this torch has no such op."""
    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return None


class TorchCudaKernel(TorchAttention):
    """One SDPA kernel on CUDA. Subclasses set the kernel, its gate, capabilities and ``forward``."""

    #: name of torch.backends.cuda.can_use_*_attention (None: the kernel has no gate)
    gate_name: str | None = None
    #: aten ops the backend calls; it is not built when one is missing
    ops: tuple[str, ...] = ()
    #: K and V are repeated per group before the kernel (GQA) rather than passed with Hk heads
    expands_gqa: bool = True

    @classmethod
    def buildable(cls) -> bool:
        """Whether this torch has the kernel's enum member and ops (no CUDA call)."""
        return cls.kernel is not None and all(aten_op(op) is not None for op in cls.ops)

    def gate(self) -> Callable[..., bool] | None:
        return getattr(torch.backends.cuda, self.gate_name, None) if self.gate_name else None

    def gate_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool]:
        """What torch's selector sees: ``(q, k, v, is_causal, enable_gqa)`` (K, V as passed to the kernel)."""
        return q, k, v, variant is not None, False

    def device_refusals(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        variant: CausalVariant | None) -> list[str]:
        gate = self.gate()
        if gate is None:
            return []
        gq, gk, gv, is_causal, gqa = self.gate_inputs(q, k, v, variant)
        with sdpa_kernel([self.kernel]):
            return torch_refusals(gate, sdpa_params(gq, gk, gv, is_causal, gqa))

    def case_refusals(self, case: AttentionCase, op: str) -> list[str]:
        """Ask torch's gate with empty CUDA tensors of the case's shape; [] if it cannot be asked here."""
        if self.gate() is None or case.device != "cuda":
            return []
        try:
            q = torch.empty(case.B, case.Hq, case.Sq, case.D, dtype=case.dtype, device="cuda")
            k, v = (torch.empty(case.B, case.Hk, case.Sk, case.D, dtype=case.dtype, device="cuda") for _ in "kv")
            return self.device_refusals(*self.gate_tensors(q, k, v, op == "attention_backward"), case.causal)
        except Exception:  # no usable CUDA here (e.g. a test faking is_available): the call asks again
            return []

    def prepared_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V as the kernel receives them: repeated per group when ``expands_gqa``."""
        if self.expands_gqa:
            return expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
        return k, v

    def gate_tensors(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stand-ins with the shapes, dtype, layout and ``requires_grad`` the kernel will see (no copy of data)."""
        if self.expands_gqa and k.shape[1] != q.shape[1]:
            shape = (k.shape[0], q.shape[1], *k.shape[2:])
            k, v = k.new_empty(shape), v.new_empty(shape)
        return tuple(x.detach().requires_grad_(backward) for x in (q, k, v))  # type: ignore[return-value]

    def kernel_lse(self, lse: object, q: torch.Tensor) -> torch.Tensor | None:
        """The kernel's lse as [B, H, Sq]; an unknown shape is recorded in the notes and lse is computed."""
        got = lse_as_b_h_sq(lse, q.shape[0], q.shape[1], q.shape[2])
        if got is None:
            shape = tuple(lse.shape) if isinstance(lse, torch.Tensor) else type(lse).__name__
            self.record(f"{self.name}: the kernel returned logsumexp of shape {shape}, not [B, H, Sq]; lse was "
                        "computed from the scores instead")
        return got


def cuda_caps(**fields: object) -> Capabilities:
    """Capabilities of a CUDA kernel backend: CUDA, both causal names unless told, GQA, not deterministic."""
    base = dict(devices=("cuda",), causal=("top_left", "bottom_right"), causal_default="top_left", gqa=True,
                deterministic=False)
    base.update(fields)
    return Capabilities(**base)  # type: ignore[arg-type]


COMMON_CUDA_NOTES = (
    "written for torch 2.4..2.13; run by its author only with torch 2.11.0+cu130, cuDNN 9.19, on an H200, "
    "against a float64 oracle on a few shapes (tests/test_torch_backend.py); checked before each call with "
    "torch.backends.cuda.can_use_*_attention (a refusal is an InvalidInputError with torch's reasons)",
    BACKWARD_NOTE,
    "deterministic=False: not established (fused backward kernels may accumulate with atomics unless "
    "torch.use_deterministic_algorithms is on); with torch 2.11 on an H200, gradients of a 300x200 bf16 case "
    "were bit-identical over 10 repeats for every kernel except efficient bottom_right; GRAD-6 measures it",
)


class TorchFlashBackend(TorchCudaKernel):
    """SDPA's FlashAttention-2 kernel: ``aten._scaled_dot_product_flash_attention`` (out and lse)."""

    name = "torch-flash"
    description = "torch SDPA, flash kernel (FlashAttention-2), CUDA"
    kernel = SDPBackend.FLASH_ATTENTION
    gate_name = "can_use_flash_attention"
    ops = ("_scaled_dot_product_flash_attention",)
    expands_gqa = not HAS_ENABLE_GQA
    capabilities = cuda_caps(
        dtypes=HALF, backward_dtypes=HALF, head_dims=(1, 256), memory="linear", saves="lse",
        notes=COMMON_CUDA_NOTES + (
            "kernel: aten._scaled_dot_product_flash_attention (what SDPA calls under "
            "sdpa_kernel(FLASH_ATTENTION)); head dims not a multiple of 8 are zero-padded and the output "
            "sliced, as SDPA does; lse is the kernel's logsumexp [B, H, Sq]",
            "causal: the kernel's causal flag is bottom-right aligned when Sq != Sk (FlashAttention >= 2.1); "
            "bottom_right uses it (as torch's causal_lower_right does), top_left is supported only for "
            "Sq == Sk (torch refuses is_causal with Sq != Sk for flash)",
            "GQA passed through natively (torch >= 2.5), else K and V repeated per group",
            "sm80+ (sm80..sm121 in recent torch); backward with head dim in (192, 224] refused on sm86/89 by "
            "torch's gate",
            "fully masked rows (bottom_right, Sq > Sk) and negative custom scales: returned as the kernel "
            "computes them; its deviations from SPEC.md are findings in conformance/xfails/torch.txt",
            "autograd saves q, k, v, out, lse [B, H, Sq] and the RNG state: nothing of Sq x Sk (torch 2.11)",
            "variants: none; the flash kernel takes no attn_mask (SDPA does not route a mask to it)",
        ),
    )

    def kernel_reasons(self, case: AttentionCase, backward: bool) -> list[str]:
        if case.causal == "top_left" and case.Sq != case.Sk:
            return ["top-left causal with Sq != Sk: the flash kernel's causal mask is bottom-right aligned "
                    "then, and torch refuses is_causal=True with Sq != Sk for it"]
        return []

    def gate_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool]:
        # causal_lower_right asks the gate with is_causal=False when Sq != Sk (torch's CausalBias)
        is_causal = variant == "top_left" or (variant == "bottom_right" and q.shape[2] == k.shape[2])
        return q, k, v, is_causal, k.shape[1] != q.shape[1]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``_scaled_dot_product_flash_attention(q, k, v, 0, causal, scale=scale)``, D padded to a multiple of 8."""
        k, v = self.prepared_kv(q, k, v)
        D = q.shape[-1]
        pad = -D % 8
        if pad:
            q, k, v = (F.pad(x, (0, pad)) for x in (q, k, v))
        result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, variant is not None, False,
                                                                    scale=scale)
        out = result[0][..., :D] if pad else result[0]
        return out, self.kernel_lse(result[1], q)


class TorchEfficientBackend(TorchCudaKernel):
    """SDPA's memory-efficient (CUTLASS, xFormers) kernel with ``compute_log_sumexp=True``."""

    name = "torch-efficient"
    description = "torch SDPA, memory-efficient kernel (CUTLASS), CUDA"
    kernel = SDPBackend.EFFICIENT_ATTENTION
    gate_name = "can_use_efficient_attention"
    ops = ("_scaled_dot_product_efficient_attention", "_efficient_attention_forward")
    capabilities = cuda_caps(
        dtypes=(torch.float16, torch.bfloat16, torch.float32), backward_dtypes=(torch.float16, torch.bfloat16,
                                                                               torch.float32),
        head_dims=(8, 256), head_dim_multiple=8, memory="linear", saves="lse",
        notes=COMMON_CUDA_NOTES + (
            "kernel: aten._scaled_dot_product_efficient_attention(compute_log_sumexp=True) for no causal and "
            "top_left; bottom_right with Sq != Sk: aten._efficient_attention_forward(custom_mask_type="
            "LOWER_RIGHT), what torch's causal_lower_right calls; lse is the kernel's, padded to a multiple of "
            "32 rows and sliced to Sq",
            "head dims: torch needs D % 8 == 0 for fp16/bf16 and D % 4 for fp32 (sm80+), and does not pad for "
            "this kernel; declared multiple of 8 up to 256 (torch sets no upper bound; larger D not checked)",
            "GQA: K and V repeated per group before the kernel (native GQA support varies across torch "
            "versions)",
            "bottom_right with Sq > Sk: returned as the kernel computes it; its deviations from SPEC.md there "
            "are findings in conformance/xfails/torch.txt",
            "autograd saves q, k, v, out and the Sq-padded lse: nothing of Sq x Sk (torch 2.11)",
            "variants: bias (SPEC VAR-6) as the kernel's attn_bias, what SDPA passes it for an attn_mask: in q's "
            "dtype (a bool mask as 0 / -inf), the causal mask added, its last dim padded to a multiple of 16 "
            "and sliced (the alignment the kernel needs, as SDPA's preprocess_mask does), broadcast to "
            "[B, Hq, Sq, Sk]; is_causal is then off. Written for torch 2.11 but not yet run on a GPU: the "
            "integrator's H200 run of VAR-6 is its check",
        ),
        attention_variants=frozenset({"bias"}),
    )

    def gate_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool]:
        is_causal = variant == "top_left" or (variant == "bottom_right" and q.shape[2] == k.shape[2])
        return q, k, v, is_causal, False

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        k, v = self.prepared_kv(q, k, v)
        if bias is not None:
            Sk = k.shape[2]
            mask = sdpa_mask(bias, variant, q, k)
            aligned = F.pad(mask, (0, -Sk % 16))[..., :Sk]
            result = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, aligned, True, 0.0, False,
                                                                            scale=scale)
            return result[0], self.kernel_lse(result[1], q)
        if variant == "bottom_right" and q.shape[2] != k.shape[2]:
            from torch.nn.attention.bias import CausalVariant as TorchCausal  # imports torch._dynamo: lazily

            result = torch.ops.aten._efficient_attention_forward(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias=None, cu_seqlens_q=None,
                cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                custom_mask_type=int(TorchCausal.LOWER_RIGHT), compute_log_sumexp=True, scale=scale)
            return result[0].transpose(1, 2), self.kernel_lse(result[1], q)
        result = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0,
                                                                        variant is not None, scale=scale)
        return result[0], self.kernel_lse(result[1], q)


class TorchCudnnBackend(TorchCudaKernel):
    """SDPA's cuDNN kernel with ``compute_log_sumexp=True``."""

    name = "torch-cudnn"
    description = "torch SDPA, cuDNN attention kernel, CUDA"
    kernel = getattr(SDPBackend, "CUDNN_ATTENTION", None)
    gate_name = "can_use_cudnn_attention"
    ops = ("_scaled_dot_product_cudnn_attention",)
    capabilities = cuda_caps(
        dtypes=HALF, backward_dtypes=HALF, head_dims=(8, 128), head_dim_multiple=8, causal=("top_left",),
        memory="linear", saves="lse",
        notes=COMMON_CUDA_NOTES + (
            "kernel: aten._scaled_dot_product_cudnn_attention(compute_log_sumexp=True), arguments passed by "
            "name (its signature changed in torch 2.5); lse is the kernel's ([B, H, Sq, 1] reshaped)",
            "head dims: multiple of 8 up to 128 (recent torch with cuDNN > 9.22 allows 256 on sm90/sm10x; "
            "not declared); key/value length 1 is refused by torch; cuDNN < 9 needs Sq >= 64",
            "causal: top_left only (cuDNN's causal mask is top-left also for Sq != Sk: checked with torch 2.11 "
            "on an H200); bottom_right would go through a materialised [Sq, Sk] mask (torch's "
            "causal_lower_right has no cuDNN path), so it is not declared",
            "autograd saves q, k, v, out and lse [B, H, Sq, 1]: nothing of Sq x Sk (torch 2.11)",
            "GQA: K and V repeated per group before the kernel",
            "variants: none declared; the aten op has an attn_bias argument in recent torch, not checked here",
        ),
    )

    def kernel_reasons(self, case: AttentionCase, backward: bool) -> list[str]:
        if case.Sk == 1:
            return ["key/value sequence length 1: torch refuses it for cuDNN SDPA"]
        return []

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        k, v = self.prepared_kv(q, k, v)
        op = torch.ops.aten._scaled_dot_product_cudnn_attention
        wanted = {"attn_bias": None, "compute_log_sumexp": True, "dropout_p": 0.0, "is_causal": variant is not None,
                  "return_debug_mask": False, "scale": scale}
        names = {a.name for a in op.default._schema.arguments}
        result = op(q, k, v, **{n: x for n, x in wanted.items() if n in names})
        return result[0], self.kernel_lse(result[1], q)


class TorchMathBackend(TorchCudaKernel, TorchOps):
    """SDPA's math (composite) kernel on CUDA, forced with ``sdpa_kernel(SDPBackend.MATH)``."""

    name = "torch-math"
    description = "torch SDPA, math (composite, materialising) kernel, CUDA"
    kernel = SDPBackend.MATH
    expands_gqa = not HAS_ENABLE_GQA
    capabilities = cuda_caps(
        dtypes=LOW_AND_FULL, backward_dtypes=LOW_AND_FULL, head_dims=(1, 512), memory="quadratic",
        saves="scores", stats_dtypes=LOW_AND_FULL, kd_dtypes=LOW_AND_FULL, reduce_dtypes=(torch.float32,),
        notes=COMMON_CUDA_NOTES + (
            "kernel: F.scaled_dot_product_attention under sdpa_kernel(MATH): materialises the [B, H, Sq, Sk] "
            "scores and probabilities and autograd saves them; bottom_right through causal_lower_right "
            "(a materialised mask); torch >= 2.5 computes fp16/bf16 math in float32",
            "lse: the math kernel returns none; computed from the float32 scores with torch.logsumexp",
            "fully masked rows (bottom_right, Sq > Sk): out 0, no NaN (torch 2.11's math kernel uses a safe "
            "softmax); the computed lse is -inf",
            "softmax_stats, softmax_merge, kd_loss and reduce_sum of torch on CUDA are declared here (they do "
            "not depend on the attention kernel)",
            "variants: bias (SPEC VAR-6) as F.scaled_dot_product_attention's attn_mask in q's dtype (a bool mask "
            "as 0 / -inf), the causal mask added to it; lse from the scores plus that bias",
        ) + OPS_NOTES,
        attention_variants=frozenset({"bias"}),
    )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kk, vv = self.prepared_kv(q, k, v)
        extra = {"enable_gqa": True} if kk.shape[1] != q.shape[1] else {}
        bottom_right = variant == "bottom_right" and q.shape[2] != k.shape[2]
        if bias is not None:  # the causal mask goes into the additive bias
            mask = sdpa_mask(bias, variant, q, k)
            with sdpa_kernel([SDPBackend.MATH]):
                out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=scale, **extra)
            return out, (lse_from_scores(q, k, None, scale, mask) if need_lse else None)
        mask = None
        if bottom_right:
            from torch.nn.attention.bias import causal_lower_right  # imports torch._dynamo: only when needed

            mask = causal_lower_right(q.shape[2], k.shape[2])
        with sdpa_kernel([SDPBackend.MATH]):
            out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=variant is not None
                                                 and not bottom_right, scale=scale, **extra)
        return out, (lse_from_scores(q, k, variant, scale) if need_lse else None)


CUDA_BACKENDS: tuple[type[TorchCudaKernel], ...] = (TorchFlashBackend, TorchEfficientBackend, TorchCudnnBackend,
                                                    TorchMathBackend)
