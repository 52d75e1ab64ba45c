"""``attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=None,
scale=None, window=None, softcap=None) -> (out, lse)`` (SPEC VLEN).

Packed sequences: ``q [total_q, Hq, D]``, ``k, v [total_k, Hk, D]``; sequence ``b`` holds query rows
``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` and key rows ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` (``cu_seqlens_*``
int32 ``[num_seqs + 1]``; zero-length sequences allowed), and is attended on its own, as dense attention of
its ``Sq_b`` queries over its ``Sk_b`` keys with its own causal alignment and window (SPEC VAR; ``window``
and ``softcap`` where the backend declares them). Returns ``out [total_q, Hq, D]`` like q and
``lse [Hq, total_q]`` float32 (float64 for float64 inputs).

Cost: ``4·Hq·D·Σ_b Sq_b·Sk_b`` FLOPs (every pair of a sequence visible), against
``4·num_seqs·Hq·max_q·max_k·D`` for the same batch padded to the longest sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implementations import validate
from implementations.base import Capabilities, CausalVariant, resolve_causal, wide_dtype
from implementations.ops.attention import naive as dense_naive
from implementations.ops.attention import oracle as dense_oracle
from implementations.ops.exact import stat_dtype
from implementations.ops.spec import Expected, OpSpec
from implementations.variants import Variants


@dataclass(frozen=True)
class VarlenInputs:
    """A validated varlen call; ``offsets_q`` / ``offsets_k`` are ``cu_seqlens_*`` read on the host."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    causal: CausalVariant | None
    scale: float
    variants: Variants
    offsets_q: tuple[int, ...]
    offsets_k: tuple[int, ...]

    @property
    def sequences(self) -> list[tuple[slice, slice]]:
        """``(query rows, key rows)`` of each sequence in the packed tensors."""
        oq, ok = self.offsets_q, self.offsets_k
        return [(slice(oq[b], oq[b + 1]), slice(ok[b], ok[b + 1])) for b in range(len(oq) - 1)]


def check_packed(caps: Capabilities, op: str, dtypes: tuple[torch.dtype, ...], q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                 max_seqlen_k: int, *, causal: bool | str | None, scale: float | None,
                 window: tuple[int, int] | None, softcap: float | None) -> VarlenInputs:
    """The boundary check shared by the varlen forward and backward (validate.packed_args, cu_seqlens_arg)."""
    validate.packed_args(caps, op, q, k, v, dtypes)
    host_q = validate.cu_seqlens_arg("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device)
    host_k = validate.cu_seqlens_arg("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q.device)
    if host_q.shape != host_k.shape:
        raise validate.InvalidInputError(f"cu_seqlens_q has {host_q.shape[0] - 1} sequences but cu_seqlens_k has "
                                         f"{host_k.shape[0] - 1}")
    longest = max(int((host_q[1:] - host_q[:-1]).max()), int((host_k[1:] - host_k[:-1]).max()))
    scores = (len(host_q) - 1, q.shape[1], longest, longest)
    variants = validate.variant_args(caps, scores, q.device, window=window, softcap=softcap)
    return VarlenInputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                        resolve_causal(causal, caps), validate.scale_arg(scale, q.shape[2]), variants,
                        tuple(host_q.tolist()), tuple(host_k.tolist()))


def check(caps: Capabilities, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
          cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool | str | None = None,
          scale: float | None = None, window: tuple[int, int] | None = None,
          softcap: float | None = None) -> VarlenInputs:
    """The boundary check of the varlen forward."""
    return check_packed(caps, "attention_varlen", caps.varlen_dtypes, q, k, v, cu_seqlens_q, cu_seqlens_k,
                        max_seqlen_q, max_seqlen_k, causal=causal, scale=scale, window=window, softcap=softcap)


def expected(inputs: dict[str, torch.Tensor]) -> list[Expected]:
    q = inputs["q"]
    return [Expected.like("out", q), Expected("lse", (q.shape[1], q.shape[0]), wide_dtype(q.dtype), q.device)]


def forward_flops(seqlens_q: list[int], seqlens_k: list[int], H: int, D: int) -> int:
    """``4·H·D·Σ_b Sq_b·Sk_b``: the packed batch's work, every pair of a sequence visible."""
    return 4 * H * D * sum(sq * sk for sq, sk in zip(seqlens_q, seqlens_k))


# ------------------------------------------------------------------------------------------------
# Oracle: each sequence as its own dense problem (the dense oracle of :mod:`implementations.ops.attention`)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """Packed rows ``[S, H, D]`` of one sequence as a batch of one ``[1, H, S, D]``."""
    return x.transpose(0, 1)[None]


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, *,
         causal: CausalVariant | None, scale: float, dtype: torch.dtype | None,
         **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [total_q, Hq, D]`` and ``lse [Hq, total_q]`` of every sequence's dense attention, on the CPU: the
    float64 oracle (``dtype`` None) or the naive form in ``dtype``."""
    wide = torch.float64 if dtype is None else stat_dtype(dtype)
    out = torch.zeros(q.shape, dtype=dtype or torch.float64)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=wide)
    for b in range(len(cu_q) - 1):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.stop > rows.start and keys.stop > keys.start:
            dense = (_dense(q[rows]), _dense(k[keys]), _dense(v[keys]))
            o, l = (dense_oracle(*dense, causal=causal, scale=scale, **variants) if dtype is None
                    else dense_naive(*dense, causal=causal, scale=scale, dtype=dtype, **variants))
            out[rows], lse[:, rows] = o[0].transpose(0, 1).cpu(), l[0].cpu()
    return out, lse


def oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, *,
           causal: CausalVariant | None, scale: float, **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 oracle of VLEN-1, on the CPU."""
    return _run(q, k, v, cu_q, cu_k, causal=causal, scale=scale, dtype=None, **variants)


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, *,
          causal: CausalVariant | None, scale: float, dtype: torch.dtype,
          **variants: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive form in ``dtype``, sequence by sequence."""
    return _run(q, k, v, cu_q, cu_k, causal=causal, scale=scale, dtype=dtype, **variants)


SPEC: OpSpec[VarlenInputs] = OpSpec(
    name="attention_varlen",
    signature="attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=None, "
              "scale=None, window=None, softcap=None) -> (out, lse)",
    inputs=("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"), outputs=("out", "lse"),
    declared_dtypes=lambda caps: caps.varlen_dtypes, validate=check, expected=expected, oracle=oracle, naive=naive,
    multipliers={"out": 2.0, "lse": 2.0},
)
