"""The ``triton`` backend: Triton kernels behind the attnspec contract (docs/backend-contract.md).

On a CUDA device the kernels are compiled for the GPU. Without CUDA the backend runs on the Triton
interpreter (``TRITON_INTERPRET=1``) on CPU tensors, declaring ``max_seq_len=256`` so CPU runs stay short.
"""

from __future__ import annotations

import torch

from .. import ops
from ..base import AttentionCase, Backend, Capabilities, Case, InvalidInputError, dtype_name
from ..ops import implementation
from ..schedule import Schedule
from .attention_bwd import attention_backward, attention_delta, backward_config
from .attention_fwd import attention_forward, attention_fp8, forward_config
from .decode_paged import attention_decode_paged
from .kd_loss import kd_loss
from .reduce import SCHEDULE_KIND, sum_with_schedule
from .softmax_stats import softmax_merge, softmax_stats
from .variants import KernelVariants
from .varlen import attention_varlen_backward, attention_varlen_forward

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GPU_TILES: tuple[tuple[int, int], ...] = ((64, 32), (64, 64), (128, 32), (128, 64))
INTERPRETER_TILES: tuple[tuple[int, int], ...] = ((16, 16), (32, 64), (64, 32), (64, 64))
INTERPRETER_MAX_SEQ_LEN = 256
#: SPEC VAR variants the attention kernels take (an additive bias tensor is not implemented)
VARIANTS = frozenset({"window", "softcap", "alibi"})


def triton_capabilities(interpreter: bool) -> Capabilities:
    """What the backend declares on the GPU, or on the interpreter (``interpreter=True``)."""
    return Capabilities(
        devices=("cpu",) if interpreter else ("cuda",),
        dtypes=FLOAT_DTYPES,
        backward_dtypes=FLOAT_DTYPES,
        head_dims=(16, 256),
        max_seq_len=INTERPRETER_MAX_SEQ_LEN if interpreter else None,
        memory="linear",
        saves="lse",
        deterministic=True,
        tiles=INTERPRETER_TILES if interpreter else GPU_TILES,
        stats_dtypes=FLOAT_DTYPES,
        kd_dtypes=FLOAT_DTYPES,
        kd_fused=True,
        reduce_dtypes=(torch.float32,),
        reduce_schedule=SCHEDULE_KIND,
        attention_variants=VARIANTS,
        varlen_dtypes=FLOAT_DTYPES,
        varlen_backward_dtypes=FLOAT_DTYPES,
        decode_dtypes=FLOAT_DTYPES,
        fp8_dtypes=(torch.float8_e4m3fn,),
        emulated=interpreter,
        notes=(
            "kernels: attention_forward_kernel (online softmax, exp2; causal and window bands: blocks outside "
            "skipped, edges masked; softcap, ALiBi; packed varlen sequences; e4m3 with descales), "
            "attention_delta_kernel + attention_dkdv_kernel + attention_dq_kernel (recompute from lse, "
            "no atomics), softmax_stats_kernel, softmax_merge_kernel, kd_loss_kernel (rows cut into "
            "parts that meet through a per-row counter; two passes over each part, the second from L2), "
            "strided_block_sum_kernel (rows into lanes, pairwise tree over the lanes), decode_split_kernel + "
            "decode_merge_kernel (paged KV, split-KV partials merged with the softmax-statistics algebra)",
            "lse: natural log, float32, written by the forward kernel",
            "float32 products use tl.dot input_precision='ieee' (exact, no TF32; FMA units, small fixed tiles)",
            "Triton interpreter on CPU" if interpreter else "compiled for the CUDA device",
        ),
    )


class TritonBackend(Backend):
    """Triton kernels for every operation of the contract (see the package's NOTES.md)."""

    name = "triton"

    def __init__(self, interpreter: bool) -> None:
        self.interpreter = interpreter
        self.capabilities = triton_capabilities(interpreter)
        self.description = ("Triton kernels on the CPU interpreter (TRITON_INTERPRET=1)" if interpreter
                            else "Triton kernels compiled for CUDA")

    def tile_problem(self, dtype: torch.dtype, tiles: tuple[int, int] | None) -> str | None:
        """Why ``tiles`` cannot be used for ``dtype`` here, or None (ATT-7 narrowing)."""
        if tiles is not None and not self.interpreter and dtype == torch.float32:
            return ("explicit tiles are exposed for float16/bfloat16 only on the GPU: float32 uses exact FMA "
                    "products on fixed small tiles")
        return None

    def not_supported_reasons(self, op: str, case: Case) -> list[str]:
        reasons = super().not_supported_reasons(op, case)
        if isinstance(case, AttentionCase) and op in ("attention", "attention_backward"):
            problem = self.tile_problem(case.dtype, case.tiles)
            if problem:
                reasons.append(problem)
        return reasons

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """ATT-1..ATT-9: ``(out, lse)``."""
        q = inp.q
        _require(self.tile_problem(q.dtype, inp.tiles) is None, str(self.tile_problem(q.dtype, inp.tiles)))
        config = forward_config(q.shape[-1], q.dtype, q.device, inp.tiles)
        var = inp.variants
        return attention_forward(q, inp.k, inp.v, inp.causal, inp.scale, config, window=var.window,
                                 softcap=var.softcap, alibi_slopes=var.alibi_slopes)

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1..GRAD-6: ``(dq, dk, dv)`` recomputed from ``lse`` (float32)."""
        q = inp.q
        _require(inp.lse.dtype == torch.float32, f"lse must be float32, got {dtype_name(inp.lse.dtype)}")
        _require(self.tile_problem(q.dtype, inp.tiles) is None, str(self.tile_problem(q.dtype, inp.tiles)))
        config = backward_config(q.shape[-1], q.dtype, q.device, inp.tiles)
        var = inp.variants
        return attention_backward(q, inp.k, inp.v, inp.out, inp.lse, inp.dout, inp.causal, inp.scale, config,
                                  window=var.window, softcap=var.softcap, alibi_slopes=var.alibi_slopes)

    @implementation("attention_varlen")
    def attention_varlen(self, inp: ops.VarlenInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """VLEN: packed sequences, one program per query block of one sequence (``varlen``)."""
        q = inp.q
        return attention_varlen_forward(
            q, inp.k, inp.v, inp.cu_seqlens_q, inp.cu_seqlens_k, inp.max_seqlen_q, inp.max_seqlen_k,
            KernelVariants(inp.causal, inp.variants.window, inp.variants.softcap), inp.scale,
            forward_config(q.shape[-1], q.dtype, q.device))

    @implementation("attention_varlen_backward")
    def attention_varlen_backward(self, inp: ops.VarlenBackwardInputs
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VLEN backward: ``(dq, dk, dv)`` of the packed sequences, recomputed from ``lse [Hq, total_q]``."""
        q = inp.q
        _require(inp.lse.dtype == torch.float32, f"lse must be float32, got {dtype_name(inp.lse.dtype)}")
        return attention_varlen_backward(
            q, inp.k, inp.v, inp.out, inp.lse, inp.dout, inp.cu_seqlens_q, inp.cu_seqlens_k, inp.max_seqlen_q,
            inp.max_seqlen_k, KernelVariants(inp.causal, inp.variants.window, inp.variants.softcap), inp.scale,
            backward_config(q.shape[-1], q.dtype, q.device))

    @implementation("attention_decode_paged")
    def attention_decode_paged(self, inp: ops.DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """DEC: split-KV over the pages, partials merged with the softmax-statistics algebra."""
        return attention_decode_paged(inp.q, inp.k_pages, inp.v_pages, inp.block_table, inp.kv_lens, inp.scale,
                                      inp.num_splits)

    @implementation("attention_fp8")
    def attention_fp8(self, inp: ops.Fp8Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """FP8: e4m3 products, ``P V`` in bfloat16, descales folded into the logit scale and the output."""
        q = inp.q
        return attention_fp8(q, inp.k, inp.v, (inp.q_descale, inp.k_descale, inp.v_descale), inp.causal,
                             inp.scale, forward_config(q.shape[-1], q.dtype, q.device))

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """GRAD-3: ``rowsum(dout * out)``, float32 ``[B, Hq, Sq]``."""
        return attention_delta(inp.out, inp.dout)

    @implementation("softmax_stats")
    def softmax_stats(self, inp: ops.StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-1: row max ``m`` and ``l = sum exp(x - m)``, float32, in blocks of ``block`` columns."""
        block = inp.block
        _require(block is None or (isinstance(block, int) and block >= 1), f"block must be an int >= 1, got {block!r}")
        return softmax_stats(inp.x, block)

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``(max(m1, m2), l1 e^(m1-m) + l2 e^(m2-m))`` elementwise."""
        return softmax_merge(inp.m1, inp.l1, inp.m2, inp.l2)

    @implementation("kd_loss")
    def kd_loss(self, inp: ops.KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """KD-1, KD-2, KD-7: fused loss and ``ds`` (``kd_loss.kd_loss_kernel``: parts of a row, two passes each)."""
        return kd_loss(inp.s, inp.t, temperature=inp.temperature, alpha=inp.alpha, labels=inp.labels,
                       ignore_index=inp.ignore_index, ds_shape=inp.shape)

    @implementation("reduce_sum")
    def reduce_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, Schedule]:
        """WD-1, WD-2: the strided-lanes sum and its schedule (bit-identical to ``schedule.evaluate``)."""
        return sum_with_schedule(inp.x)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInputError(message)
