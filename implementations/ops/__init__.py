"""The operations of the backend contract, one module each (docs/adding-an-operation.md).

``OPS`` maps each operation's name to its :class:`~implementations.ops.spec.OpSpec`, in the order the suite
checks them. A backend implements an operation with a method of that name; a ``Backend`` subclass writes it
as ``@OPS[name].implementation`` over a method taking the validated inputs record, so the arguments are
checked once, at the boundary. ``BENCH_OPS`` maps each benchmark operation's name to its
:class:`~implementations.ops.workload.BenchOp`, in the order the benchmarks run them.
"""

from __future__ import annotations

from implementations.ops import (
    attention,
    attention_backward,
    attention_context_parallel,
    attention_context_parallel_backward,
    attention_decode_paged,
    attention_delta,
    attention_fp8,
    attention_varlen,
    attention_varlen_backward,
    kd_loss,
    prefix_sum,
    reduce_sum,
    softmax_merge,
    softmax_stats,
)
from implementations.ops.attention import AttentionInputs
from implementations.ops.attention_backward import BackwardInputs
from implementations.ops.attention_context_parallel import ContextParallelInputs
from implementations.ops.attention_context_parallel_backward import ContextParallelBackwardInputs
from implementations.ops.attention_decode_paged import DecodeInputs
from implementations.ops.attention_delta import DeltaInputs
from implementations.ops.attention_fp8 import Fp8Inputs
from implementations.ops.attention_varlen import VarlenInputs
from implementations.ops.attention_varlen_backward import VarlenBackwardInputs
from implementations.ops.kd_loss import KDInputs
from implementations.ops.reduce_sum import ReduceInputs
from implementations.ops.softmax_merge import MergeInputs
from implementations.ops.softmax_stats import StatsInputs
from implementations.ops.spec import Expected, OpSpec
from implementations.ops.workload import AttentionWorkload, BenchOp, RowsWorkload

OPS: dict[str, OpSpec] = {spec.name: spec for spec in (
    attention.SPEC, attention_backward.SPEC, attention_delta.SPEC, softmax_stats.SPEC, softmax_merge.SPEC,
    kd_loss.SPEC, reduce_sum.SPEC, prefix_sum.SPEC, attention_varlen.SPEC, attention_varlen_backward.SPEC,
    attention_decode_paged.SPEC, attention_fp8.SPEC, attention_context_parallel.SPEC,
    attention_context_parallel_backward.SPEC)}
BENCH_OPS: dict[str, BenchOp] = {bench.name: bench for spec in OPS.values() for bench in spec.benchmarks}


def implementation(op: str):  # noqa: ANN201 - a decorator
    """``@implementation("attention")`` over a backend method taking the validated inputs record of ``op``:
    the method becomes the contract's, checking its arguments once at the boundary."""
    return OPS[op].implementation


__all__ = ["BENCH_OPS", "OPS", "AttentionInputs", "AttentionWorkload", "BackwardInputs", "BenchOp",
           "ContextParallelBackwardInputs", "ContextParallelInputs", "DecodeInputs", "DeltaInputs", "Expected",
           "Fp8Inputs", "KDInputs", "MergeInputs", "OpSpec", "ReduceInputs", "RowsWorkload", "StatsInputs",
           "VarlenBackwardInputs", "VarlenInputs",
           "implementation"]
