"""``torch-cp``: torch's own context-parallel attention as a DIST backend (forward only).

torch's ``context_parallel`` (``torch.distributed.tensor.experimental``) shards buffers inside a context and
sends SDPA calls to its ring attention; that ring is ``_templated_ring_attention`` (private), which takes the
rank's shards and a process group and returns the merged output and lse. This backend calls it with SDPA's
flash kernel (``_scaled_dot_product_flash_attention_for_cpu`` on the CPU, ``_scaled_dot_product_flash_attention``
on CUDA) and torch's own options: K and V move by its default rotation (all-gather), the zig-zag layout is its
load-balanced (round-robin) one. What it does not take is declared: GQA, Sq != Sk, bottom-right, uneven shards
(it halves each shard into two equal chunks), a backward through this entry point.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist

from implementations import ops
from implementations.base import Backend, BackendUnavailable, Capabilities, Case, new_output
from implementations.ops import implementation
from implementations.sequence_layout import SEQUENCE_LAYOUTS


def _ring() -> tuple[object, object]:
    """torch's ring attention function and its options, where this torch has them."""
    try:
        from torch.distributed.tensor.experimental._context_parallel import _attention
    except ImportError:
        try:
            from torch.distributed.tensor.experimental import _attention  # type: ignore[no-redef]
        except ImportError as exc:
            raise BackendUnavailable(f"torch {torch.__version__} has no context-parallel ring attention") from exc
    ring = getattr(_attention, "_templated_ring_attention", None)
    if ring is None:
        raise BackendUnavailable(f"torch {torch.__version__}: no _templated_ring_attention in {_attention.__name__}")
    first = next(iter(inspect.signature(ring).parameters), None)
    if first != "group":
        raise BackendUnavailable(f"torch {torch.__version__}: its ring attention takes {first!r} first, not a "
                                 "process group")
    return ring, _attention._cp_options


class TorchContextParallel(Backend):
    """torch's ring attention over SDPA's flash kernel on the rank's shards."""

    name = "torch-cp"
    description = "torch's context-parallel ring attention (torch.distributed.tensor.experimental) over SDPA flash"

    def __init__(self, device: str) -> None:
        _ring()  # unavailable here when this torch lacks it; looked up again at each call (the backend is pickled)
        self.device = device
        self.capabilities = Capabilities(
            devices=(device,), dtypes=(torch.float32,) if device == "cpu" else (torch.bfloat16, torch.float16),
            head_dims=(1, 256), equal_seq_lens=True, causal=("top_left",), gqa=False, memory="linear",
            context_parallel=SEQUENCE_LAYOUTS,
            notes=("torch's _templated_ring_attention, its default K/V rotation and round-robin load balance",))

    def not_supported_reasons(self, op: str, case: Case) -> list[str]:
        """Beyond the declared limits: shards of unequal length (a DIST case's split)."""
        reasons = super().not_supported_reasons(op, case)
        world = getattr(case, "world", None)
        if world is not None:
            parts = 2 * world if getattr(case, "seq_layout", "") == "zigzag" else world
            if getattr(case, "skewed", False) or case.Sq % parts or case.Sk % parts:  # type: ignore[union-attr]
                reasons.append(f"uneven shards: torch's ring attention needs lengths that are multiples of {parts} "
                               "here (it exchanges equal buffers and halves each shard)")
        return reasons

    @implementation("attention_context_parallel")
    def attention_context_parallel(self, inp: ops.ContextParallelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """DIST-1: torch's ring attention; load balance on for the zig-zag layout with a causal mask."""
        group = inp.group if inp.group is not None else dist.group.WORLD
        causal = inp.causal is not None
        ring, options = _ring()
        options.enable_load_balance = causal and inp.layout == "zigzag"  # type: ignore[attr-defined]
        flash = (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu if self.device == "cpu"
                 else torch.ops.aten._scaled_dot_product_flash_attention)
        found, found_lse, *_ = ring(group, 2, flash, inp.q, inp.k, inp.v,  # type: ignore[operator]
                                    is_causal=causal, scale=inp.scale)
        out = new_output(inp.q.shape, inp.q.dtype, inp.q.device)
        lse = new_output(inp.q.shape[:3], torch.float32, inp.q.device)
        out.copy_(found)
        lse.copy_(found_lse)
        return out, lse


def backends() -> TorchContextParallel:
    """``torch-cp`` on CUDA where there is a GPU, else on the CPU (gloo)."""
    if not dist.is_available():
        raise BackendUnavailable("torch.distributed is not available in this torch build")
    return TorchContextParallel("cuda" if torch.cuda.is_available() else "cpu")
