"""The ``cupy`` backend: the CUDA C++ kernels of this package behind the attnspec contract.

Every operation checks its inputs (:mod:`implementations.validate`), allocates outputs with
:func:`implementations.base.new_output`, and launches kernels on torch's current CUDA stream; tensors are
passed as their device addresses, never copied. See ``KERNELS.md`` for the kernels' designs and resources.
"""

from __future__ import annotations

import torch

from implementations import ops
from implementations.base import (
    AttentionCase,
    Backend,
    Capabilities,
    Case,
    InvalidInputError,
    dtype_name,
    new_output,
)
from implementations.cupy import _kernels as K
from implementations.cupy.attention import attention_forward, launch_backward, launch_delta
from implementations.cupy.schedule_builder import grid_size, reduce_schedule
from implementations.cupy.variant_ops import VariantOps
from implementations.ops import implementation
from implementations.schedule import DeferredSchedule

HALF_DTYPES = (torch.bfloat16, torch.float16)
ROW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_GRID_Y = 65535
REDUCE_THREADS = 512
ROW_THREADS = 512
#: kd_part defaults: columns per part of a row and threads per CTA. A part's s and t are 64 KB in float32; at
#: ~40 registers 6 CTAs of 256 threads fit an SM, so the parts in flight (792 on 132 SMs, 50 MB) about fill
#: the L2 and pass 2 finds its lines there (128 threads: 12 CTAs per SM, twice that). ``CupyBackend.kd_part_cols``
#: / ``kd_threads`` override them.
KD_PART = 8192
KD_THREADS = 256
KD_COL_ALIGN = 64  # part boundaries fall on multiples of this many columns (16-byte packs, whole lines)
INT32_MAX = 2**31 - 1


def kd_split(V: int, N: int, sms: int, part: int = KD_PART) -> tuple[int, int]:
    """``(parts, cols)`` of ``kd_part`` for ``N`` rows of ``V`` columns on a device with ``sms`` SMs.

    Parts of ``part`` columns, widened (to a multiple of ``KD_COL_ALIGN``) so that a row has at most ``sms``
    parts (the parts of a row wait for each other, so all of them must be able to be resident at once) and
    ``N * parts`` tickets fit an int32.
    """
    if N > INT32_MAX:
        raise InvalidInputError(f"kd_loss: {N} rows exceed the int32 grid of the cupy kernel")
    cols = max(part, -(-V // min(sms, INT32_MAX // N)))
    cols = -(-cols // KD_COL_ALIGN) * KD_COL_ALIGN
    return -(-V // cols), cols


def _unit_last_stride(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise InvalidInputError(f"{name} must have unit stride in its last dimension (got strides {t.stride()})")


def _check_grid(B: int, H: int, what: str) -> None:
    if B * H > MAX_GRID_Y:
        raise InvalidInputError(f"B*{what} = {B * H} exceeds the CUDA grid limit {MAX_GRID_Y} of these kernels")


class CupyBackend(VariantOps, Backend):
    """Tensor-core attention (mma.sync), online-softmax statistics, fused KD loss and a scheduled reduction."""

    name = "cupy"
    description = ("CUDA C++ kernels compiled by NVRTC through cupy.RawModule: mma.sync attention forward and "
                   "backward, softmax statistics, fused KD loss, declared-order float32 sum")
    capabilities = Capabilities(
        devices=("cuda",),
        dtypes=HALF_DTYPES,
        backward_dtypes=HALF_DTYPES,
        memory="linear",
        saves="lse",
        deterministic=True,
        stats_dtypes=ROW_DTYPES,
        kd_dtypes=ROW_DTYPES,
        kd_fused=True,
        reduce_dtypes=(torch.float32,),
        reduce_schedule="strided sequential per thread, shfl_down warp tree, CTA tree, second launch over CTAs",
        attention_variants=frozenset({"window"}),
        varlen_dtypes=HALF_DTYPES,
        varlen_backward_dtypes=HALF_DTYPES,
        decode_dtypes=ROW_DTYPES,
        notes=(
            "attention: mma.sync.m16n8k16 bf16/fp16 with float32 accumulation; any D <= 256 is zero-padded "
            "to a multiple of 16 (32 above 128) in shared memory; 16-byte cp.async loads when D % 8 == 0 and "
            "strides/pointers are aligned, element loads otherwise",
            "lse from the forward's online softmax (natural log, float32)",
            "backward: dK/dV per 64-key block looping over query heads of the GQA group and query blocks; dQ "
            "in a separate kernel; no atomics, so gradients are deterministic",
            "inputs need unit stride in the last dimension; other strides are honoured (no copies)",
            "B*Hq (and B*Hk) at most 65535 (grid y)",
            "window and varlen: forward and backward skip key/query blocks outside each sequence's band; "
            "decode: decode_split (a CTA per split x KV head x chunk of <= 8 query rows, 16-byte K/V loads, "
            "TPK threads a key) + decode_merge",
            "kd_loss: each row cut into parts of 8192 columns, one 256-thread CTA per part taking (row, part) from a "
            "start-order ticket; a part streams its columns (statistics), meets the row's other parts through "
            "global memory, and streams them again from L2 writing ds (parts <= SMs, so the wait cannot "
            "deadlock); -inf logits allowed; per-row KL clamped at >= 0",
        ),
    )

    def not_supported_reasons(self, op: str, case: Case) -> list[str]:
        reasons = super().not_supported_reasons(op, case)
        if isinstance(case, AttentionCase) and case.B * case.Hq > MAX_GRID_Y:
            reasons.append(f"B*Hq = {case.B * case.Hq} exceeds the grid limit {MAX_GRID_Y} of these kernels")
        return reasons

    # -- attention --------------------------------------------------------------------------------

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``out = softmax(scale Q K^T + mask) V`` and ``lse`` (natural log, float32), ATT-1..9."""
        q, k, v = inp.q, inp.k, inp.v
        _unit_last_stride(q=q, k=k, v=v)
        _check_grid(q.shape[0], q.shape[1], "Hq")
        return attention_forward(q, k, v, inp.causal, inp.scale, window=inp.variants.window)

    @implementation("attention_delta")
    def attention_delta(self, inp: ops.DeltaInputs) -> torch.Tensor:
        """``delta = rowsum(dout * out)`` in float32, ``[B, Hq, Sq]`` (GRAD-3)."""
        out, dout = inp.out, inp.dout
        _unit_last_stride(out=out, dout=dout)
        delta = new_output(out.shape[:3], torch.float32, out.device)
        launch_delta(out, dout, delta)
        return delta

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dq, dk, dv`` by recomputation from ``lse`` (GRAD-1..6); dK/dV summed over each GQA group."""
        q, k, v, out, lse, dout = inp.q, inp.k, inp.v, inp.out, inp.lse, inp.dout
        if lse.dtype != torch.float32:
            raise InvalidInputError(f"lse must be float32, got {dtype_name(lse.dtype)}")
        _unit_last_stride(q=q, k=k, v=v, out=out, dout=dout)
        _check_grid(q.shape[0], q.shape[1], "Hq")
        grads = (new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device),
                 new_output(v.shape, v.dtype, v.device))
        launch_backward(q, k, v, out, lse.contiguous(), dout, grads, inp.causal, inp.variants.window, inp.scale)
        return grads

    # -- softmax statistics -----------------------------------------------------------------------

    @implementation("softmax_stats")
    def softmax_stats(self, inp: ops.StatsInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-wise ``m = max x`` (exact) and ``l = sum exp(x - m)`` in float32 (SMX-1, SMX-5).

        ``block=None``: one pass, each thread's online (m, l) over 16-byte packs, merged by warp shuffles and a
        CTA tree. ``block=b``: exact statistics of each run of b elements, merged in order (SMX-3).
        """
        x, block = inp.x, inp.block
        _unit_last_stride(x=x)
        if block is not None and (not isinstance(block, int) or block < 1):
            raise InvalidInputError(f"block must be a positive int or None, got {block!r}")
        N, L = x.shape
        m = new_output((N,), torch.float32, x.device)
        l = new_output((N,), torch.float32, x.device)
        T = K.CXX_TYPE[x.dtype]
        if block is None:
            vw = 16 // x.element_size()
            vec = x.data_ptr() % 16 == 0 and (N == 1 or x.stride(0) % vw == 0)
            expr = f"softmax_stats<{T}, {ROW_THREADS}, {K.cxx_bool(vec)}>"
            args = (x, K.i64(x.stride(0)), K.i32(L), m, l)
            threads = ROW_THREADS
        else:
            expr = f"softmax_stats_blocked<{T}, 256>"
            args = (x, K.i64(x.stride(0)), K.i32(L), K.i32(min(block, L)), m, l)
            threads = 256
        K.launch(K.kernel("softmax_stats", expr, x.device), (N,), (threads,), args, x.device)
        return m, l

    @implementation("softmax_merge")
    def softmax_merge(self, inp: ops.MergeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``m = max(m1, m2)``, ``l = l1 e^(m1-m) + l2 e^(m2-m)`` element-wise, in the inputs' dtype (SMX-2)."""
        m1, l1, m2, l2 = inp.m1, inp.l1, inp.m2, inp.l2
        m_out = new_output(m1.shape, m1.dtype, m1.device)
        l_out = new_output(m1.shape, m1.dtype, m1.device)
        n = m1.numel()
        if n == 0:
            return m_out, l_out
        # Statistics vectors are small: non-contiguous views are compacted rather than given stride arguments.
        flat = [x.contiguous() for x in (m1, l1, m2, l2)]
        K.launch(K.kernel("softmax_stats", f"softmax_merge<{K.CXX_TYPE[m1.dtype]}>", m1.device), (-(-n // 256),),
                 (256,), (*flat, m_out, l_out, K.i64(n)), m1.device)
        return m_out, l_out

    # -- knowledge distillation -------------------------------------------------------------------

    #: columns per part of ``kd_part`` (None: ``KD_PART``) and threads per CTA (None: ``KD_THREADS``); tests and
    #: benchmarks set them on an instance
    kd_part_cols: int | None = None
    kd_threads: int | None = None

    @implementation("kd_loss")
    def kd_loss(self, inp: ops.KDInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused KD loss and its gradient (KD-1, KD-2, KD-7): see ``kd_loss.cu`` for the formulas.

        ``kd_scale`` (1 / count), ``kd_part`` (one CTA per part of a row, :func:`kd_split`: statistics, the
        row's parts meet, ds) and ``kd_finalize`` (the loss, fixed order). The only [N, V] buffer is ds.
        """
        s2, t2, y, alpha, T, ignore_index = inp.s, inp.t, inp.labels, inp.alpha, inp.temperature, inp.ignore_index
        _unit_last_stride(s=s2, t=t2)
        N, V = s2.shape
        dev = s2.device
        ce = y is not None and alpha < 1.0
        labels64 = y.to(torch.int64).contiguous() if y is not None else None
        vw = 16 // s2.element_size()
        vec = (V % vw == 0 and s2.data_ptr() % 16 == 0 and t2.data_ptr() % 16 == 0
               and (N == 1 or (s2.stride(0) % vw == 0 and t2.stride(0) % vw == 0)))
        threads = self.kd_threads or KD_THREADS
        if threads % 32 or not 32 <= threads <= 1024:
            raise ValueError(f"kd_threads must be a multiple of 32 in [32, 1024], got {threads}")
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        parts, cols = kd_split(V, N, sms, self.kd_part_cols or KD_PART)
        sync = torch.zeros((1 + N,), dtype=torch.int32, device=dev)  # ticket counter, per-row arrivals
        partial = torch.empty((N, parts, 8), dtype=torch.float32, device=dev) if parts > 1 else K.null_pointer()
        row_loss = torch.empty((N,), dtype=torch.float32, device=dev)
        scale = torch.empty((1,), dtype=torch.float32, device=dev)
        loss = new_output((), torch.float32, dev)
        ds = new_output(inp.shape, s2.dtype, dev)
        lab = labels64 if labels64 is not None else K.null_pointer()
        tmpl = f"{K.CXX_TYPE[s2.dtype]}, {threads}, {K.cxx_bool(vec)}, {K.cxx_bool(ce)}"
        K.launch(K.kernel("kd_loss", "kd_scale", dev), (1,), (1024,), (lab, K.i64(N), K.i32(ignore_index), scale), dev)
        K.launch(K.kernel("kd_loss", f"kd_part<{tmpl}>", dev), (N * parts,), (threads,),
                 (s2, t2, K.i64(s2.stride(0)), K.i64(t2.stride(0)), K.i32(V), K.i32(cols), K.i32(parts), lab,
                  K.i32(ignore_index), K.f32(1.0 / T), K.f32(alpha), K.f32(T * T), scale, sync, partial, row_loss,
                  ds), dev)
        K.launch(K.kernel("kd_loss", "kd_finalize", dev), (1,), (1024,), (row_loss, K.i64(N), scale, loss), dev)
        return loss, ds

    # -- reduction --------------------------------------------------------------------------------

    @implementation("reduce_sum")
    def reduce_sum(self, inp: ops.ReduceInputs) -> tuple[torch.Tensor, DeferredSchedule]:
        """Float32 sum in the order of :func:`~implementations.cupy.schedule_builder.reduce_schedule` (WD-2)."""
        x = inp.x
        value, ctas = reduce_value(x)
        n = x.numel()
        return value, DeferredSchedule(n, lambda: reduce_schedule(n, ctas, REDUCE_THREADS))


def reduce_value(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Launch the reduction over a checked float32 vector; returns the sum and the first launch's CTA count
    (benchmarks call this directly: building the schedule of 2^28 inputs is the harness's business)."""
    _unit_last_stride(x=x)
    n = x.numel()
    ctas = grid_size(n, REDUCE_THREADS, torch.cuda.get_device_properties(x.device).multi_processor_count)
    value = new_output((), torch.float32, x.device)
    kern = K.kernel("reduce_sum", f"reduce_sum_f32<{REDUCE_THREADS}>", x.device)
    if ctas == 1:
        K.launch(kern, (1,), (REDUCE_THREADS,), (x, K.i64(n), value), x.device)
        return value, ctas
    partial = torch.empty((ctas,), dtype=torch.float32, device=x.device)
    K.launch(kern, (ctas,), (REDUCE_THREADS,), (x, K.i64(n), partial), x.device)
    K.launch(kern, (1,), (REDUCE_THREADS,), (partial, K.i64(ctas), value), x.device)
    return value, ctas
