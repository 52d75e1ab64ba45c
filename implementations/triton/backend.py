"""The ``triton`` backend: Triton kernels behind the attnspec contract (docs/backend-contract.md).

On a CUDA device the kernels are compiled for the GPU. Without CUDA the backend runs on the Triton
interpreter (``TRITON_INTERPRET=1``) on CPU tensors, declaring ``max_seq_len=256`` so CPU runs stay short.
"""

from __future__ import annotations

import torch

from .. import validate
from ..base import AttentionCase, Backend, Capabilities, Case, InvalidInputError, dtype_name
from ..schedule import Schedule
from .attention_bwd import attention_backward, attention_delta, backward_config
from .attention_fwd import attention_forward, forward_config
from .kd_loss import kd_loss
from .reduce import SCHEDULE_KIND, sum_with_schedule
from .softmax_stats import softmax_merge, softmax_stats

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GPU_TILES: tuple[tuple[int, int], ...] = ((64, 32), (64, 64), (128, 32), (128, 64))
INTERPRETER_TILES: tuple[tuple[int, int], ...] = ((16, 16), (32, 64), (64, 32), (64, 64))
INTERPRETER_MAX_SEQ_LEN = 256


def triton_capabilities(interpreter: bool) -> Capabilities:
    """What the backend declares on the GPU, or on the interpreter (``interpreter=True``)."""
    return Capabilities(
        devices=("cpu",) if interpreter else ("cuda",),
        dtypes=FLOAT_DTYPES,
        backward_dtypes=FLOAT_DTYPES,
        head_dims=(16, 256),
        max_seq_len=INTERPRETER_MAX_SEQ_LEN if interpreter else None,
        causal=("top_left", "bottom_right"),
        causal_default="top_left",
        gqa=True,
        memory="linear",
        saves="lse",
        deterministic=True,
        tiles=INTERPRETER_TILES if interpreter else GPU_TILES,
        stats_dtypes=FLOAT_DTYPES,
        kd_dtypes=FLOAT_DTYPES,
        kd_fused=True,
        reduce_dtypes=(torch.float32,),
        reduce_schedule=SCHEDULE_KIND,
        notes=(
            "kernels: attention_forward_kernel (online softmax, exp2, causal blocks skipped), "
            "attention_delta_kernel + attention_dkdv_kernel + attention_dq_kernel (recompute from lse, "
            "no atomics), softmax_stats_kernel, softmax_merge_kernel, kd_loss_kernel (rows cut into "
            "parts that meet through a per-row counter; two passes over each part, the second from L2), "
            "strided_block_sum_kernel (rows into lanes, pairwise tree over the lanes)",
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

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool | str | None = None,
                  scale: float | None = None, tiles: tuple[int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """ATT-1..ATT-9: ``(out, lse)``."""
        variant, scale_value = validate.attention_args(self.capabilities, q, k, v, causal=causal, scale=scale,
                                                       tiles=tiles)
        _require(self.tile_problem(q.dtype, tiles) is None, str(self.tile_problem(q.dtype, tiles)))
        config = forward_config(q.shape[-1], q.dtype, q.device, tiles)
        return attention_forward(q, k, v, variant, scale_value, config)

    def attention_backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                           lse: torch.Tensor, dout: torch.Tensor, *, causal: bool | str | None = None,
                           scale: float | None = None, tiles: tuple[int, int] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRAD-1..GRAD-6: ``(dq, dk, dv)`` recomputed from ``lse``."""
        variant, scale_value = validate.backward_args(self.capabilities, q, k, v, out, lse, dout, causal=causal,
                                                      scale=scale, tiles=tiles)
        _require(out.dtype == q.dtype and dout.dtype == q.dtype,
                 f"out and dout must have q's dtype {dtype_name(q.dtype)}, got {dtype_name(out.dtype)} and "
                 f"{dtype_name(dout.dtype)}")
        _require(lse.dtype == torch.float32, f"lse must be float32, got {dtype_name(lse.dtype)}")
        _require(self.tile_problem(q.dtype, tiles) is None, str(self.tile_problem(q.dtype, tiles)))
        config = backward_config(q.shape[-1], q.dtype, q.device, tiles)
        return attention_backward(q, k, v, out, lse, dout, variant, scale_value, config)

    def attention_delta(self, out: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
        """GRAD-3: ``rowsum(dout * out)``, float32 ``[B, Hq, Sq]``."""
        for name, x in (("out", out), ("dout", dout)):
            _require(isinstance(x, torch.Tensor) and x.dim() == 4,
                     f"{name} must be a 4-d tensor [B, Hq, Sq, D], got {getattr(x, 'shape', type(x).__name__)}")
        _require(out.shape == dout.shape, f"out {tuple(out.shape)} and dout {tuple(dout.shape)} shapes differ")
        _require(out.device == dout.device, f"device mismatch: out on {out.device}, dout on {dout.device}")
        _require(out.device.type in self.capabilities.devices,
                 f"device {out.device.type} is not supported (supported: {list(self.capabilities.devices)})")
        _require(out.dtype == dout.dtype and out.dtype in self.capabilities.backward_dtypes,
                 f"out/dout dtypes {dtype_name(out.dtype)}/{dtype_name(dout.dtype)} must match and be one of "
                 f"{[dtype_name(d) for d in self.capabilities.backward_dtypes]}")
        _require(out.numel() > 0, f"empty out {tuple(out.shape)}")
        return attention_delta(out, dout)

    def softmax_stats(self, x: torch.Tensor, *, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-1: row max ``m`` and ``l = sum exp(x - m)``, float32, in blocks of ``block`` columns."""
        validate.rows_arg(self.capabilities, "softmax_stats", x)
        _require(block is None or (isinstance(block, int) and block >= 1), f"block must be an int >= 1, got {block!r}")
        return softmax_stats(x, block)

    def softmax_merge(self, m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor,
                      l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SMX-2: ``(max(m1, m2), l1 e^(m1-m) + l2 e^(m2-m))`` elementwise."""
        parts = {"m1": m1, "l1": l1, "m2": m2, "l2": l2}
        for name, x in parts.items():
            _require(isinstance(x, torch.Tensor), f"{name} must be a torch.Tensor, got {type(x).__name__}")
            _require(x.shape == m1.shape, f"{name} shape {tuple(x.shape)} differs from m1 {tuple(m1.shape)}")
            _require(x.dtype == m1.dtype, f"dtype mismatch: {name} is {dtype_name(x.dtype)}, m1 is "
                     f"{dtype_name(m1.dtype)}")
            _require(x.device == m1.device, f"device mismatch: {name} on {x.device}, m1 on {m1.device}")
        _require(m1.device.type in self.capabilities.devices,
                 f"device {m1.device.type} is not supported (supported: {list(self.capabilities.devices)})")
        _require(m1.dtype in self.capabilities.stats_dtypes, f"softmax_merge: dtype {dtype_name(m1.dtype)} is not "
                 f"supported (supported: {[dtype_name(d) for d in self.capabilities.stats_dtypes]})")
        return softmax_merge(m1, l1, m2, l2)

    def kd_loss(self, s: torch.Tensor, t: torch.Tensor, *, temperature: float, alpha: float = 1.0,
                labels: torch.Tensor | None = None, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
        """KD-1, KD-2, KD-7: fused loss and ``ds`` (``kd_loss.kd_loss_kernel``: parts of a row, two passes each)."""
        s_rows, t_rows, flat_labels, alpha_value = validate.kd_args(
            self.capabilities, s, t, temperature=temperature, alpha=alpha, labels=labels, ignore_index=ignore_index)
        return kd_loss(s_rows, t_rows, temperature=float(temperature), alpha=alpha_value, labels=flat_labels,
                       ignore_index=ignore_index, ds_shape=s.shape)

    def reduce_sum(self, x: torch.Tensor) -> tuple[torch.Tensor, Schedule]:
        """WD-1, WD-2: the strided-lanes sum and its schedule (bit-identical to ``schedule.evaluate``)."""
        validate.rows_arg(self.capabilities, "reduce_sum", x)
        return sum_with_schedule(x)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInputError(message)
