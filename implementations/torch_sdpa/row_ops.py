"""The row operations of the torch backends, written with plain torch ops (SPEC SMX, KD, WD): softmax
statistics and their merge, the KD loss and the reduction, as the ``TorchOps`` mixin, and the notes the
backends that declare them carry."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from implementations import ops
from implementations.base import Backend, InvalidInputError, new_output, wide_dtype
from implementations.ops import implementation
from implementations.torch_sdpa.common import NEG_INF


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
