"""The backend contract: what a backend declares, what it implements, and how it is found.

A backend is an object with a ``name``, a ``capabilities`` declaration and one method per operation it
implements (the operations of ``implementations.ops``, one module each). Tensors cross the boundary as
torch tensors, CPU or CUDA, shaped as in SPEC.md (``Q [B,Hq,Sq,D]``, ``K,V [B,Hk,Sk,D]``). A method that
is absent means "not implemented" and is reported as such, never as a failure. A case the backend declares
unsupported is reported as *unsupported* with the readable reasons of
:meth:`Backend.not_supported_reasons` (the xformers model).

Bad input at the boundary raises :class:`InvalidInputError` with a message naming the problem
(SPEC ATT-11, KD-8); :mod:`implementations.validate` holds the shared checks.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from implementations.variants import ATTENTION_VARIANTS, BiasKind, DecodeCase, VarlenCase

CausalVariant = Literal["top_left", "bottom_right"]
CAUSAL_VARIANTS: tuple[CausalVariant, ...] = ("top_left", "bottom_right")

class InvalidInputError(ValueError):
    """The one error type a backend raises for bad input; the message names the problem (ATT-11, KD-8)."""


class BackendUnavailable(RuntimeError):
    """Raised by a factory when its backend cannot run here (no GPU, package missing, ...)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares. The conformance matrix is generated from these fields.

    Attention fields describe ``attention``/``attention_backward``; ``*_dtypes`` of the other operations
    say which input dtypes they accept (empty: the operation is not declared even if a method exists).
    """

    devices: tuple[str, ...] = ("cpu",)
    #: attention forward input dtypes
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    #: attention backward input dtypes (empty: no backward)
    backward_dtypes: tuple[torch.dtype, ...] = ()
    #: inclusive range of head dims, and a multiple they must be of
    head_dims: tuple[int, int] = (1, 256)
    head_dim_multiple: int = 1
    #: the only head dims accepted, where a kernel is built per head dim (empty: every one in the range)
    head_dim_set: tuple[int, ...] = ()
    #: longest Sq or Sk the backend accepts (None: no limit)
    max_seq_len: int | None = None
    #: Sq and Sk must be multiples of this (kernels without ragged-edge masking)
    seq_len_multiple: int = 1
    #: Sq must equal Sk (self-attention only)
    equal_seq_lens: bool = False
    #: largest batch B accepted (None: no limit)
    max_batch: int | None = None
    #: Q, K, V must be contiguous (a strided view is refused with a message saying so)
    contiguous_only: bool = False
    #: causal variants supported by name (SPEC ATT-3), and what ``causal=True`` means
    causal: tuple[CausalVariant, ...] = CAUSAL_VARIANTS
    causal_default: CausalVariant = "top_left"
    #: Hk < Hq (GQA/MQA) supported
    gqa: bool = True
    #: ATT-10: "linear" must not hold an Sq x Sk buffer; "quadratic" is exempt
    memory: Literal["linear", "quadratic"] = "linear"
    #: GRAD-2: "lse" saves only Q, K, V, out, lse for backward; "scores" keeps Sq x Sk tensors
    saves: Literal["lse", "scores"] = "lse"
    #: GRAD-6: bit-identical gradients over repeats
    deterministic: bool = False
    #: ATT-7: the (block_m, block_n) tile choices ``attention(..., tiles=)`` accepts (empty: none exposed)
    tiles: tuple[tuple[int, int], ...] = ()
    #: softmax statistics and their merge (SMX)
    stats_dtypes: tuple[torch.dtype, ...] = ()
    #: knowledge-distillation loss (KD); ``kd_fused`` claims KD-7 (chunked, no [N, V] float32 temporary)
    kd_dtypes: tuple[torch.dtype, ...] = ()
    kd_fused: bool = False
    #: reduction (WD); the kind of schedule it declares, or None when its order is not declared
    reduce_dtypes: tuple[torch.dtype, ...] = ()
    reduce_schedule: str | None = None
    #: attention variants (SPEC VAR) supported by ``attention``, its backward and the varlen operations: a
    #: subset of ``variants.ATTENTION_VARIANTS`` ("window", "softcap", "bias", "alibi")
    attention_variants: frozenset[str] = frozenset()
    #: packed variable-length attention (SPEC VLEN), forward and backward input dtypes
    varlen_dtypes: tuple[torch.dtype, ...] = ()
    varlen_backward_dtypes: tuple[torch.dtype, ...] = ()
    #: paged-KV decode (SPEC DEC) input dtypes
    decode_dtypes: tuple[torch.dtype, ...] = ()
    #: fp8 forward (SPEC FP8) input dtypes (``torch.float8_e4m3fn``)
    fp8_dtypes: tuple[torch.dtype, ...] = ()
    #: DIST: the sequence layouts ("contiguous", "zigzag") of attention_context_parallel (empty: not declared);
    #: its dtypes are ``dtypes`` and, for its backward, ``backward_dtypes``
    context_parallel: tuple[str, ...] = ()
    #: the kernels run in an emulator (Triton's interpreter): conformance samples each clause's cases for it
    #: unless asked for every case (``attnspec conformance --every-case``)
    emulated: bool = False
    #: free-form facts shown in reports (lse source, kernel names, ...)
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        """A JSON-friendly view for listings and reports."""

        def names(dts: tuple[torch.dtype, ...]) -> list[str]:
            return [dtype_name(d) for d in dts]

        return {
            "devices": list(self.devices),
            "dtypes": names(self.dtypes),
            "backward_dtypes": names(self.backward_dtypes),
            "head_dims": f"{self.head_dims[0]}..{self.head_dims[1]}"
            + (f" (multiple of {self.head_dim_multiple})" if self.head_dim_multiple > 1 else ""),
            "head_dim_set": list(self.head_dim_set),
            "max_seq_len": self.max_seq_len,
            "seq_len_multiple": self.seq_len_multiple,
            "equal_seq_lens": self.equal_seq_lens,
            "max_batch": self.max_batch,
            "contiguous_only": self.contiguous_only,
            "causal": list(self.causal),
            "causal_default": self.causal_default,
            "gqa": self.gqa,
            "memory": self.memory,
            "saves": self.saves,
            "deterministic": self.deterministic,
            "tiles": [list(t) for t in self.tiles],
            "stats_dtypes": names(self.stats_dtypes),
            "kd_dtypes": names(self.kd_dtypes),
            "kd_fused": self.kd_fused,
            "reduce_dtypes": names(self.reduce_dtypes),
            "reduce_schedule": self.reduce_schedule,
            "attention_variants": sorted(self.attention_variants),
            "varlen_dtypes": names(self.varlen_dtypes),
            "varlen_backward_dtypes": names(self.varlen_backward_dtypes),
            "decode_dtypes": names(self.decode_dtypes),
            "fp8_dtypes": names(self.fp8_dtypes),
            "context_parallel": list(self.context_parallel),
            "emulated": self.emulated,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class AttentionCase:
    """One attention problem: shapes as in SPEC.md, ``causal`` None or a variant name.

    ``layout`` is how the inputs lie in memory: ``"bhsd"`` contiguous ``[B, H, S, D]``, or ``"bshd"``: storage
    ``[B, S, H, D]`` (the layout projections produce) seen through a transposed, non-contiguous
    ``[B, H, S, D]`` view, as real callers pass it. ``window``, ``softcap``, ``bias`` (its kind) and ``alibi``
    are the variant arguments of SPEC VAR the case passes.
    """

    B: int
    Hq: int
    Hk: int
    Sq: int
    Sk: int
    D: int
    dtype: torch.dtype
    device: str
    causal: CausalVariant | None = None
    tiles: tuple[int, int] | None = None
    layout: Literal["bhsd", "bshd"] = "bhsd"
    window: tuple[int, int] | None = None
    softcap: float | None = None
    bias: BiasKind | None = None
    alibi: bool = False

    @property
    def variants(self) -> frozenset[str]:
        """The attention variants the case uses (``Capabilities.attention_variants`` names)."""
        used = {"window": self.window is not None, "softcap": self.softcap is not None,
                "bias": self.bias is not None, "alibi": self.alibi}
        return frozenset(name for name, on in used.items() if on)

    @property
    def label(self) -> str:
        """The shape part of a test id, e.g. ``B2H4-113x203-D59-causal_br`` (``-bshd`` for strided inputs),
        then the variants: ``-w64.0`` (window), ``-cap30`` (softcap), ``-bias_Hqk`` (its shape, or ``mask``),
        ``-alibi``."""
        heads = f"H{self.Hq}" if self.Hk == self.Hq else f"H{self.Hq}k{self.Hk}"
        causal = {None: "", "top_left": "-causal_tl", "bottom_right": "-causal_br"}[self.causal]
        tiles = f"-tile{self.tiles[0]}x{self.tiles[1]}" if self.tiles else ""
        layout = "" if self.layout == "bhsd" else f"-{self.layout}"
        window = f"-w{self.window[0]}.{self.window[1]}" if self.window else ""
        cap = f"-cap{self.softcap:g}" if self.softcap else ""
        bias = f"-bias_{self.bias}" if self.bias else ""
        alibi = "-alibi" if self.alibi else ""
        return f"B{self.B}{heads}-{self.Sq}x{self.Sk}-D{self.D}{causal}{tiles}{layout}{window}{cap}{bias}{alibi}"


@dataclass(frozen=True)
class RowsCase:
    """A ``[rows, cols]`` problem: softmax statistics, KD loss (cols = V), reduction (rows = 1)."""

    rows: int
    cols: int
    dtype: torch.dtype
    device: str

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.cols}"


Case = AttentionCase | RowsCase | VarlenCase | DecodeCase


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_causal(causal: bool | str | None, caps: Capabilities) -> CausalVariant | None:
    """Map the ``causal`` argument to a variant name; ``True`` means ``caps.causal_default`` (ATT-3)."""
    if causal is None or causal is False:
        return None
    if causal is True:
        return caps.causal_default
    if causal not in CAUSAL_VARIANTS:
        raise InvalidInputError(f"causal must be None, True, 'top_left' or 'bottom_right', got {causal!r}")
    if causal not in caps.causal:
        raise InvalidInputError(f"causal variant {causal!r} is not supported (supported: {list(caps.causal)})")
    return causal


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The contract's dtype of lse, softmax statistics, delta and the KD loss: float64 for float64 inputs,
    float32 otherwise (also the accumulator dtype of tensor-core style arithmetic)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def causal_offset(causal: CausalVariant | None, Sq: int, Sk: int) -> int | None:
    """The ``offset`` of ATT-3: key ``j`` is visible to query ``i`` iff ``j <= i + offset``.

    Top-left: ``offset = 0``; bottom-right: ``offset = Sk - Sq``; ``None`` when not causal (all visible).
    """
    if causal is None:
        return None
    return 0 if causal == "top_left" else Sk - Sq


@runtime_checkable
class BackendLike(Protocol):
    """The minimum a third-party backend provides; :class:`Backend` adds the generic rules."""

    name: str
    capabilities: Capabilities

    def not_supported_reasons(self, op: str, case: Case) -> list[str]: ...


class Backend:
    """Base class of backends: generic ``not_supported_reasons`` from the declared capabilities.

    Subclasses set ``name``, ``capabilities``, implement operations of ``implementations.ops.OPS`` (as
    ``@implementation(op)`` methods taking the validated inputs record) and may extend
    ``not_supported_reasons`` with rules of their own (call ``super()`` first).
    """

    name: str = "unnamed"
    capabilities: Capabilities = Capabilities()
    #: one line shown in ``attnspec backends``
    description: str = ""

    def implements(self, op: str) -> bool:
        return callable(getattr(self, op, None))

    def not_supported_reasons(self, op: str, case: Case) -> list[str]:
        return generic_not_supported_reasons(self, op, case)

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


def generic_not_supported_reasons(backend: BackendLike, op: str, case: Case) -> list[str]:
    """Readable reasons why ``backend`` does not support ``case`` for ``op``; empty means supported."""
    from implementations.ops import OPS  # the operations' modules build on this one

    caps = backend.capabilities
    reasons: list[str] = []
    if op not in OPS:
        return [f"unknown operation {op!r}"]
    if not callable(getattr(backend, op, None)):
        return [f"{op} is not implemented"]
    if case.device not in caps.devices:
        reasons.append(f"device {case.device} not supported (declared: {list(caps.devices)})")
    dtypes = OPS[op].declared_dtypes(caps)
    if case.dtype not in dtypes:
        reasons.append(f"dtype {dtype_name(case.dtype)} not supported for {op} (declared: "
                       f"{[dtype_name(d) for d in dtypes]})")
    if isinstance(case, AttentionCase | VarlenCase | DecodeCase):
        reasons += _head_reasons(caps, case)
    if isinstance(case, AttentionCase | VarlenCase):
        reasons += _variant_reasons(caps, case)
    if isinstance(case, AttentionCase):
        reasons += _shape_reasons(caps, case)
    return reasons


def _head_reasons(caps: Capabilities, case: AttentionCase | VarlenCase | DecodeCase) -> list[str]:
    """The declared head dims and GQA support."""
    reasons = []
    lo, hi = caps.head_dims
    if not lo <= case.D <= hi:
        reasons.append(f"head dim {case.D} outside the declared range {lo}..{hi}")
    elif case.D % caps.head_dim_multiple:
        reasons.append(f"head dim {case.D} is not a multiple of {caps.head_dim_multiple}")
    elif caps.head_dim_set and case.D not in caps.head_dim_set:
        reasons.append(f"head dim {case.D} is not one of the declared {list(caps.head_dim_set)}")
    if case.Hk != case.Hq and not caps.gqa:
        reasons.append("GQA/MQA (Hk < Hq) not supported")
    return reasons


def _variant_reasons(caps: Capabilities, case: AttentionCase | VarlenCase) -> list[str]:
    """The declared causal variants and attention variants (SPEC VAR)."""
    reasons = []
    if case.causal is not None and case.causal not in caps.causal:
        reasons.append(f"causal variant {case.causal} not supported (declared: {list(caps.causal)})")
    reasons += [f"attention variant {name} not supported (declared: {sorted(caps.attention_variants)})"
                for name in ATTENTION_VARIANTS if name in case.variants - caps.attention_variants]
    return reasons


def _shape_reasons(caps: Capabilities, case: AttentionCase) -> list[str]:
    """The declared limits on dense attention shapes, layouts and tiles."""
    reasons = []
    if caps.max_seq_len is not None and max(case.Sq, case.Sk) > caps.max_seq_len:
        reasons.append(f"sequence length {max(case.Sq, case.Sk)} above the declared maximum "
                       f"{caps.max_seq_len}")
    if case.Sq % caps.seq_len_multiple or case.Sk % caps.seq_len_multiple:
        reasons.append(f"sequence lengths {case.Sq}x{case.Sk} are not multiples of the declared "
                       f"{caps.seq_len_multiple}")
    if caps.equal_seq_lens and case.Sq != case.Sk:
        reasons.append(f"Sq={case.Sq} != Sk={case.Sk} (declared: equal lengths only)")
    if caps.max_batch is not None and case.B > caps.max_batch:
        reasons.append(f"batch {case.B} above the declared maximum {caps.max_batch}")
    if caps.contiguous_only and case.layout != "bhsd":
        reasons.append(f"{case.layout} (non-contiguous) inputs not supported (declared contiguous_only)")
    if case.tiles is not None and case.tiles not in caps.tiles:
        reasons.append(f"tile sizes {case.tiles} not exposed (declared: {list(caps.tiles)})")
    return reasons


# --------------------------------------------------------------------------------------------------
# Outputs: backends allocate them with new_output so the harness can poison them (SPEC tolerance rule).

_POISON: contextvars.ContextVar[bool] = contextvars.ContextVar("attnspec_poison", default=False)


def new_output(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An output buffer: uninitialised normally, NaN-filled while the harness poisons outputs.

    Backends allocate every output through this so that an element the kernel never writes shows up as
    NaN in conformance runs (SPEC: "outputs are poisoned before the call").
    """
    if _POISON.get():
        if dtype.is_floating_point:
            return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
        return torch.full(tuple(shape), torch.iinfo(dtype).min, dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within this block :func:`new_output` returns NaN-filled buffers."""
    token = _POISON.set(True)
    try:
        yield
    finally:
        _POISON.reset(token)
