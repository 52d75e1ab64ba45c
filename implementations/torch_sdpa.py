"""PyTorch's own attention as backends: ``torch`` on the CPU and, with CUDA, one backend per SDPA kernel.

``backends()`` (registered as ``implementations.torch_sdpa:backends``) returns

- ``torch`` (CPU, always): ``torch.nn.functional.scaled_dot_product_attention``'s CPU path. When torch's own
  selector (``torch._fused_sdp_choice``) picks its CPU flash kernel, ``out`` and ``lse`` both come from one
  call of ``aten._scaled_dot_product_flash_attention_for_cpu`` -- the op ``F.scaled_dot_product_attention``
  dispatches to, so ``out`` is bit-identical to SDPA's and consistent with ``lse``. Otherwise ``out`` is
  SDPA's and ``lse`` is computed from the scores with ``torch.logsumexp`` (said in the notes).
- ``torch-flash``, ``torch-efficient``, ``torch-cudnn``, ``torch-math`` (CUDA only): each runs one SDPA
  kernel -- the aten op that ``F.scaled_dot_product_attention`` calls for it under
  ``sdpa_kernel(SDPBackend.X)``, called directly so that its ``logsumexp`` output is the ``lse`` (the math
  kernel has none: its ``lse`` is computed from the scores). Before each call torch's own gate
  (``torch.backends.cuda.can_use_*_attention``) is asked; a refusal is an ``InvalidInputError`` carrying
  torch's reasons, and ``not_supported_reasons`` reports it for a case.

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
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.torch_version import TorchVersion

from implementations import ops
from implementations.base import (
    AttentionCase,
    Backend,
    Capabilities,
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


def lse_from_scores(q: torch.Tensor, k: torch.Tensor, variant: CausalVariant | None, scale: float) -> torch.Tensor:
    """ATT-2 computed directly: ``logsumexp_j(scale · q_i·k_j)`` over visible keys, float32 (float64 for float64).

    Used where the kernel returns no lse. It materialises the ``[B, Hq, Sq, Sk]`` scores. A fully masked
    row gives -inf (``torch.logsumexp`` of all -inf).
    """
    wide = wide_dtype(q.dtype)
    scores = torch.matmul(q.to(wide), expand_kv(k, q.shape[1]).to(wide).transpose(-1, -2)) * scale
    if variant is not None:
        scores = scores.masked_fill(~visible_mask(variant, q.shape[2], k.shape[2], q.device), NEG_INF)
    return torch.logsumexp(scores, dim=-1)


def shift_of(m: torch.Tensor) -> torch.Tensor:
    """The point to subtract before ``exp``: ``m``, or 0 where ``m = -inf`` (so -inf rows give 0, not NaN)."""
    return torch.where(m == NEG_INF, torch.zeros_like(m), m)


def row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SMX-1 along the last dim: ``m = amax x``, ``l = Σ exp(x - m)``; a row of -inf gives ``(-inf, 0)``."""
    m = x.amax(dim=-1)
    return m, torch.exp(x - shift_of(m).unsqueeze(-1)).sum(dim=-1)


def merge_stats(m: torch.Tensor, l: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SMX-2 over ``dim`` at once: ``M = max m_b``, ``L = Σ_b l_b · e^(m_b - M)``; ``(-inf, 0)`` is the identity."""
    top = m.amax(dim=dim)
    return top, (l * torch.exp(m - shift_of(top).unsqueeze(dim))).sum(dim=dim)


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
                scale: float, *, need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(out, lse or None)`` from the kernel, differentiable w.r.t. q, k, v; None: compute lse."""
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
        """ATT-1..3: ``out = softmax(scale · QKᵀ + mask) V`` and ``lse`` ([B, Hq, Sq], float32/float64).

        Fully masked rows are returned as the kernel leaves them (ATT-4 records what torch does).
        """
        q, k, v, variant, scale = inp.q, inp.k, inp.v, inp.causal, inp.scale
        self.refuse_unsupported(q, k, v, variant, backward=False)
        with torch.no_grad():
            out, lse = self.forward(q, k, v, variant, scale, need_lse=True)
            if lse is None:
                lse = lse_from_scores(q, k, variant, scale)
        lse_out = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        lse_out.copy_(lse)
        return out, lse_out

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1/4/5 by autograd: the forward is recomputed through the same kernel with ``requires_grad``,
        then differentiated with ``dout`` (the kernel's own backward). ``out`` and ``lse`` are validated,
        not used; timings of this call include one forward.
        """
        variant, scale = inp.causal, inp.scale
        leaves = [x.detach().requires_grad_() for x in (inp.q, inp.k, inp.v)]
        self.refuse_unsupported(*leaves, variant, backward=True)
        with torch.enable_grad():
            recomputed, _ = self.forward(*leaves, variant, scale, need_lse=False)
            dq, dk, dv = torch.autograd.grad(recomputed, leaves, inp.dout)
        return dq, dk, dv

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """GRAD-3: ``delta = rowsum(dout ∘ out)`` ``[B, Hq, Sq]`` in float32 (float64 for float64)."""
        out, dout = inp.out, inp.dout
        wide = wide_dtype(out.dtype)
        delta = new_output(out.shape[:3], wide, out.device)
        torch.sum(dout.to(wide) * out.to(wide), dim=-1, out=delta)
        return delta


class TorchOps(Backend):
    """Softmax statistics, their merge, the KD loss and the reduction, written with plain torch ops."""

    @implementation("softmax_stats")
    def softmax_stats(self, inp: ops.StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-1: ``m = amax x``, ``l = Σ exp(x - m)`` per row, float32 (float64 for float64).

        With ``block``, each row is cut into blocks of ``block`` columns (the last padded with -inf), the
        statistics of every block are taken, and the blocks are merged with the SMX-2 weights.
        """
        x, block = inp.x, inp.block
        if block is not None and (not isinstance(block, int) or isinstance(block, bool) or block < 1):
            raise InvalidInputError(f"block must be a positive integer, got {block!r}")
        wide = wide_dtype(x.dtype)
        xw = x.to(wide)
        N, L = xw.shape
        if block is None or block >= L:
            m, l = row_stats(xw)
        else:
            padded = F.pad(xw, (0, -L % block), value=NEG_INF)
            m, l = merge_stats(*row_stats(padded.view(N, -1, block)), dim=1)
        m_out, l_out = new_output((N,), wide, x.device), new_output((N,), wide, x.device)
        m_out.copy_(m)
        l_out.copy_(l)
        return m_out, l_out

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``m = max(m1, m2)``, ``l = l1·e^(m1-m) + l2·e^(m2-m)``, in the inputs' dtype (computed wide)."""
        m1, l1, m2, l2 = inp.m1, inp.l1, inp.m2, inp.l2
        wide = wide_dtype(m1.dtype)
        m, l = merge_stats(torch.stack([m1, m2]).to(wide), torch.stack([l1, l2]).to(wide), dim=0)
        m_out, l_out = new_output(m1.shape, m1.dtype, m1.device), new_output(m1.shape, m1.dtype, m1.device)
        m_out.copy_(m)
        l_out.copy_(l)
        return m_out, l_out

    @implementation("kd_loss")
    def kd_loss(self, inp: ops.KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """KD-1/2, unfused: ``F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True,
        reduction="batchmean") · T²`` over the counted rows, times α, plus ``(1-α) · F.cross_entropy(s, y)``
        (mean over the same rows). Rows are flattened first; ``ds`` by autograd, typed like ``s``. Computed in
        float32, or float64 for float64 inputs, and the 0-dim loss is returned in that dtype (as lse, delta
        and statistics are): a float32 loss would lose float64's precision.
        """
        s2, t2, y, alpha, T, ignore_index = inp.s, inp.t, inp.labels, inp.alpha, inp.temperature, inp.ignore_index
        wide = wide_dtype(s2.dtype)
        student = s2.detach().to(wide).requires_grad_()
        teacher = t2.detach().to(wide)
        counted = None if y is None else y != ignore_index
        loss = new_output((), wide, s2.device)
        if counted is not None and not bool(counted.any()):
            loss.zero_()
            return loss, torch.zeros(inp.shape, dtype=s2.dtype, device=s2.device)
        with torch.enable_grad():
            s_rows = student if counted is None else student[counted]
            t_rows = teacher if counted is None else teacher[counted]
            kd = F.kl_div(F.log_softmax(s_rows / T, dim=-1), F.log_softmax(t_rows / T, dim=-1), log_target=True,
                          reduction="batchmean") * (T * T)
            total = alpha * kd
            if y is not None and alpha < 1.0:
                total = total + (1.0 - alpha) * F.cross_entropy(student, y.long(), ignore_index=ignore_index)
            (ds,) = torch.autograd.grad(total, student)
        loss.copy_(total.detach())
        return loss, ds.to(s2.dtype).reshape(inp.shape)

    @implementation("reduce_sum")
    def reduce_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, None]:
        """WD-1: ``torch.sum(x)`` in float32; its combine order is not declared (schedule None)."""
        x = inp.x
        value = new_output((), torch.float32, x.device)
        value.copy_(torch.sum(x))
        return value, None


#: notes shared by the backends that declare the TorchOps operations
OPS_NOTES = (
    "softmax_stats / softmax_merge: torch amax, exp, sum in float32 (float64 for float64), -inf-safe "
    "(a row of -inf gives (-inf, 0)); block=b cuts rows into blocks of b whose statistics are merged with "
    "the SMX-2 weights in one vectorised step",
    "kd_loss: F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, reduction='batchmean') * T^2 over "
    "rows whose label != ignore_index, plus (1-alpha) * F.cross_entropy; ds by autograd, rounded to s's dtype; "
    "computed in float32 (float64 for float64), the loss returned in that dtype; unfused (holds [N, V] "
    "float32 softmaxes)",
    "reduce_sum: torch.sum; its order is not declared: on the CPU a vectorised multi-accumulator cascade, on "
    "CUDA a block/warp tree, neither specified by torch nor stable across versions or sizes, so WD-2 is "
    "unsupported",
)


# --------------------------------------------------------------------------------------------------
# The CPU backend

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
            notes=(
                f"torch {torch.__version__}; {torch.get_num_threads()} threads",
                self._lse_source(),
                "bottom_right with Sq != Sk: torch materialises causal_lower_right as an [Sq, Sk] additive mask "
                "in q's dtype (once per call, shared over B and H) and autograd saves it; hence memory="
                "'quadratic' and saves='scores'. Without a mask (no causal, top_left, bottom_right with "
                "Sq == Sk) the kernel is linear (per-thread [q_split, kv_split] blocks) and saves only q, k, v, "
                "out, lse",
                self._masked_rows(),
                "FINDING (torch 2.13 CPU, all dtypes; also through F.scaled_dot_product_attention): is_causal "
                "(top_left) with a negative scale gives NaN in every row, out and lse: the CPU flash kernel "
                "fills masked scores with -inf before multiplying by the scale, so -inf times a negative scale "
                "is +inf. Non-causal and bottom_right (additive mask, added after scaling) are fine. Returned "
                "as torch computes it (ATT-8 records it)",
                "attention_backward: autograd through the same aten call (forward recomputed inside the call; "
                "the out and lse arguments are validated, not used); backward timings include one forward",
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
                scale: float, *, need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SDPA's CPU path, as ``F.scaled_dot_product_attention`` takes it.

        Bottom-right with Sq == Sk is top-left (torch's ``CausalBias`` does the same); with Sq != Sk the
        mask is materialised as torch does. GQA is passed through (``enable_gqa``) or, before torch 2.5,
        K and V are repeated per group.
        """
        Sq, Sk = q.shape[2], k.shape[2]
        gqa = k.shape[1] != q.shape[1]
        if gqa and not HAS_ENABLE_GQA:
            k, v, gqa = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1]), False
        is_causal = variant == "top_left" or (variant == "bottom_right" and Sq == Sk)
        mask = additive_mask("bottom_right", Sq, Sk, q.dtype, q.device) if variant and not is_causal else None
        if _CPU_FLASH is not None and self._flash_chosen(q, k, v, mask, is_causal, scale, gqa):
            out, lse = _CPU_FLASH(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
            return out, lse
        extra = {"enable_gqa": True} if gqa else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **extra)
        return out, (lse_from_scores(q, k, variant, scale) if need_lse else None)


# --------------------------------------------------------------------------------------------------
# CUDA: one backend per SDPA kernel


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
    "attention_backward: autograd through the same aten call (forward recomputed inside the call); backward "
    "timings include one forward",
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
        ),
    )

    def gate_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool]:
        is_causal = variant == "top_left" or (variant == "bottom_right" and q.shape[2] == k.shape[2])
        return q, k, v, is_causal, False

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        k, v = self.prepared_kv(q, k, v)
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
        ) + OPS_NOTES,
    )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        kk, vv = self.prepared_kv(q, k, v)
        extra = {"enable_gqa": True} if kk.shape[1] != q.shape[1] else {}
        bottom_right = variant == "bottom_right" and q.shape[2] != k.shape[2]
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


def backends() -> list[Backend]:
    """``torch`` on the CPU, always; with CUDA, one backend per SDPA kernel this torch has.

    Building them touches no CUDA device beyond ``torch.cuda.is_available()``: hardware limits are asked
    of torch's gates when a case is checked or run.
    """
    made: list[Backend] = [TorchCPUBackend()]
    if torch.cuda.is_available():
        made += [cls() for cls in CUDA_BACKENDS if cls.buildable()]
    return made

