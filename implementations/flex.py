"""FlexAttention (``torch.nn.attention.flex_attention``) as the ``flex`` backend: the calls a user writes.

Mapping of the contract's ``attention(q, k, v, causal, scale)`` onto FlexAttention:

- ``out, aux = flex_attention(q, k, v, block_mask=M, scale=scale, enable_gqa=Hk != Hq,
  return_aux=AuxRequest(lse=True))`` and ``lse = aux.lse`` (natural log, ``[B, Hq, Sq]``, float32; float64 for
  float64 inputs). A torch without ``AuxRequest`` (before 2.9) is called with ``return_lse=True`` instead.
- causal (SPEC ATT-3) is a block mask, ``create_block_mask(mask_mod, None, None, Sq, Sk, device)``, made once
  per (variant, Sq, Sk, device): top-left ``mask_mod = j <= i``, bottom-right ``j <= i + (Sk - Sq)``; no causal
  is ``block_mask=None`` (every key visible).
- GQA (ATT-6): ``enable_gqa=True`` when Hk < Hq; query head h reads KV head ``h // (Hq // Hk)`` in flex too.
- variants (SPEC VAR, ``implementations.variants``): the window is part of the block mask's ``mask_mod``
  (``i + Sk - Sq - left <= j <= i + Sk - Sq + right``, AND-ed with causal); softcap and ALiBi are a ``score_mod``
  over flex's scaled score, ``softcap·tanh(s / softcap)`` then ``- slope_h·|i + Sk - Sq - j|`` (the slope
  product taken in the score's dtype). ``bias`` is not declared.
- varlen (SPEC VLEN): one call over the packed tokens, ``[total, H, D]`` viewed as ``[1, H, total, D]``, with a
  document mask: ``mask_mod`` admits packed key ``j`` for packed query ``i`` iff both lie in sequence ``b`` (its
  index looked up in ``cu_seqlens``) and the causal / window rule holds at the positions relative to the
  sequence's starts with its own ``Sk_b - Sq_b``; softcap is the score_mod; lse ``[1, Hq, total_q]`` is
  returned as ``[Hq, total_q]``. The varlen backward is autograd through that call (CUDA only, as below).
- backward (GRAD): autograd through ``flex_attention`` with ``dout``, the forward recomputed inside the call
  (as the torch backends do); the ``out`` and ``lse`` arguments are validated, not used. Benchmarks time
  TorchAttention's prepared calls: ``prepare_attention_backward`` runs the forward once, untimed, and its call
  differentiates that graph; ``prepare_attention_forward_backward``'s call runs one forward, then its backward.
- CUDA: ``torch.compile(flex_attention, dynamic=False)``, the fused Triton kernels; dynamo's recompile limit
  is raised to ``RECOMPILE_LIMIT`` so that every shape of a run is compiled (past the default limit of 8,
  dynamo would silently run the unfused eager path instead).
- CPU: ``flex_attention`` called eagerly, torch's unfused reference path (it materialises the scores, and
  torch refuses its backward on the CPU), so the CPU backend declares no backward and ``memory="quadratic"``.

Nothing is corrected here: what flex returns is what the suite judges; its deviations are findings in
``conformance/xfails/flex.txt``.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable

import torch

from implementations import ops
from implementations.base import BackendUnavailable, Capabilities, CausalVariant, causal_offset
from implementations.ops import implementation
from implementations.torch_sdpa.common import TorchAttention
from implementations.variants import PLAIN, Variants

#: dynamo's per-function compiled-graph limit while this backend runs (one graph per shape and mask)
RECOMPILE_LIMIT = 4096
#: the compiled kernels need a head dim of at least 16 (inductor's "NYI: embedding dimension ... at least 16")
COMPILED_MIN_HEAD_DIM = 16
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: the variants of SPEC VAR that flex expresses with its own mods (bias is not declared)
VARIANTS = frozenset({"window", "softcap", "alibi"})


def load_flex() -> tuple[Callable[..., object], Callable[..., object], type | None]:
    """``(flex_attention, create_block_mask, AuxRequest or None)``; BackendUnavailable where torch has none."""
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError as exc:
        raise BackendUnavailable(f"torch {torch.__version__} has no torch.nn.attention.flex_attention "
                                 f"(added in torch 2.5): {exc}") from exc
    return module.flex_attention, module.create_block_mask, getattr(module, "AuxRequest", None)


def causal_mask_mod(offset: int) -> Callable[..., torch.Tensor]:
    """ATT-3 as a flex ``mask_mod``: key ``kv_idx`` visible to query ``q_idx`` iff ``kv_idx <= q_idx + offset``."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return kv_idx <= q_idx + offset

    return mask_mod


def visible_keys(q_pos: torch.Tensor, kv_pos: torch.Tensor, offset: torch.Tensor | int | None,
                 window: tuple[int, int] | None, diagonal: torch.Tensor | int) -> torch.Tensor:
    """ATT-3 AND-ed with the window (SPEC VAR) at positions ``i = q_pos``, ``j = kv_pos``: causal
    ``j <= i + offset`` (None: off), window ``i + diagonal - left <= j <= i + diagonal + right`` with
    ``diagonal = Sk - Sq`` (-1: unbounded)."""
    left, right = window or (-1, -1)
    visible = kv_pos >= 0
    if offset is not None:
        visible = visible & (kv_pos <= q_pos + offset)
    if left >= 0:
        visible = visible & (kv_pos >= q_pos + diagonal - left)
    if right >= 0:
        visible = visible & (kv_pos <= q_pos + diagonal + right)
    return visible


def visibility_mask_mod(offset: int | None, window: tuple[int, int] | None, diagonal: int
                        ) -> Callable[..., torch.Tensor]:
    """:func:`visible_keys` of one ``Sq x Sk`` problem as a flex ``mask_mod``."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return visible_keys(q_idx, kv_idx, offset, window, diagonal)

    return mask_mod


def document_mask_mod(offsets_q: tuple[int, ...], offsets_k: tuple[int, ...], causal: CausalVariant | None,
                      window: tuple[int, int] | None, device: torch.device) -> Callable[..., torch.Tensor]:
    """SPEC VLEN as one flex ``mask_mod`` over the packed tokens (document masking): packed key ``kv_idx`` is
    visible to packed query ``q_idx`` iff both lie in the same sequence ``b`` (its index from ``cu_seqlens``)
    and :func:`visible_keys` holds at the positions relative to the sequence's starts, with that sequence's own
    ``diagonal = Sk_b - Sq_b`` (and causal offset 0 top-left, ``Sk_b - Sq_b`` bottom-right)."""
    starts_q, starts_k = (torch.tensor(o, dtype=torch.int64, device=device) for o in (offsets_q, offsets_k))
    doc_q, doc_k = (torch.searchsorted(starts, torch.arange(int(starts[-1]), device=device), right=True) - 1
                    for starts in (starts_q, starts_k))
    diagonals = (starts_k[1:] - starts_k[:-1]) - (starts_q[1:] - starts_q[:-1])
    offsets = None if causal is None else diagonals * int(causal == "bottom_right")

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        doc = doc_q[q_idx]
        q_pos, kv_pos = q_idx - starts_q[doc], kv_idx - starts_k[doc]
        own = None if offsets is None else offsets[doc]
        return (doc == doc_k[kv_idx]) & visible_keys(q_pos, kv_pos, own, window, diagonals[doc])

    return mask_mod


def logit_score_mod(softcap: float | None, slopes: torch.Tensor | None, diagonal: int) -> Callable[..., torch.Tensor]:
    """SPEC VAR's logit changes as a flex ``score_mod`` over the scaled score: ``softcap·tanh(s / softcap)``,
    then ALiBi's ``-slope_h·|i + diagonal - j|`` (``diagonal = Sk - Sq``)."""

    def score_mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
                  kv_idx: torch.Tensor) -> torch.Tensor:
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if slopes is not None:
            score = score - slopes[h].to(score.dtype) * torch.abs(q_idx + diagonal - kv_idx).to(score.dtype)
        return score

    return score_mod


def repeatable_backward() -> contextlib.AbstractContextManager[object]:
    """Where graphs compiled in it get a backward that can run again on the same graph (the prepared backward's
    ``retain_graph=True``): AOTAutograd's donated buffers turned off. A compiled backward that donates (reuses
    saved tensors in place) refuses ``retain_graph=True``; flex's training graphs are compiled here, so
    ``attention_backward`` and the prepared backward share one compiled graph per shape whichever runs first.
    A torch without the option (before 2.5) donates nothing."""
    from torch._functorch import config

    return config.patch(donated_buffer=False) if hasattr(config, "donated_buffer") else contextlib.nullcontext()


class FlexBackend(TorchAttention):
    """``flex_attention``: compiled on CUDA, eager on the CPU (see the module docstring for the mapping)."""

    name = "flex"
    #: the variant arguments of the call in flight (TorchAttention's ``forward`` carries only causal and scale)
    call_variants: Variants = PLAIN

    def __init__(self, device: str) -> None:
        self.flex, self.create_block_mask, self.aux_request = load_flex()
        self.device = device
        self.compiled = device == "cuda"
        self.call = self.compile_flex() if self.compiled else self.flex
        self.description = ("torch FlexAttention, torch.compile'd Triton kernels, CUDA" if self.compiled
                            else "torch FlexAttention, eager (unfused reference path) on the CPU")
        self.capabilities = self.declare()

    def compile_flex(self) -> Callable[..., object]:
        """``torch.compile(flex_attention, dynamic=False)`` with dynamo's recompile limit raised."""
        import torch._dynamo

        config = torch._dynamo.config
        for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                      "accumulated_cache_size_limit"):
            if hasattr(config, limit):
                setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
        return torch.compile(self.flex, dynamic=False)

    def declare(self) -> Capabilities:
        lse_api = "return_aux=AuxRequest(lse=True)" if self.aux_request else "return_lse=True"
        common = (
            f"torch {torch.__version__}: flex_attention(q, k, v, block_mask, scale, enable_gqa, {lse_api}); "
            "lse is flex's own (natural log)",
            "causal: block masks from mask_mod j <= i (top_left) and j <= i + Sk - Sq (bottom_right), made "
            "once per (variant, Sq, Sk, device); no causal: block_mask=None",
            "GQA: enable_gqa=True (query head h reads KV head h // (Hq // Hk))",
            "variants: window in the block mask's mask_mod (AND-ed with causal), softcap then ALiBi in a "
            "score_mod over flex's scaled score; bias not declared",
            "varlen: one flex call over the packed tokens ([1, H, total, D]) with a document block mask (same "
            "sequence, and each sequence's own causal alignment and window at positions from its start)",
        )
        if self.compiled:
            return Capabilities(
                devices=("cuda",), dtypes=CUDA_DTYPES, backward_dtypes=CUDA_DTYPES,
                head_dims=(COMPILED_MIN_HEAD_DIM, 256), memory="linear", saves="lse", attention_variants=VARIANTS,
                varlen_dtypes=CUDA_DTYPES, varlen_backward_dtypes=CUDA_DTYPES,
                notes=common + (
                    f"torch.compile(flex_attention, dynamic=False); dynamo recompile limit {RECOMPILE_LIMIT} so "
                    "each shape is compiled (beyond the default limit dynamo falls back to the eager path)",
                    "head dims from 16 (inductor's flex kernels refuse smaller ones)",
                    "backward: autograd through the compiled call (attention_backward recomputes the forward; "
                    "benchmarks time the prepared calls, prepare_attention_backward and "
                    "prepare_attention_forward_backward, which do not)",
                ),
            )
        return Capabilities(
            devices=("cpu",), dtypes=CPU_DTYPES, backward_dtypes=(), head_dims=(1, 512), memory="quadratic",
            saves="scores", emulated=True, attention_variants=VARIANTS, varlen_dtypes=CPU_DTYPES,
            notes=common + (
                "eager on the CPU: torch's unfused reference implementation of flex (materialises the "
                "[B, H, Sq, Sk] scores); not the fused kernel, which needs torch.compile. It stands in for the "
                "kernel as the Triton interpreter does, so it is declared emulated: conformance meets a sample "
                "of each clause's cases (--every-case: all of them)",
                "no backward on the CPU: torch raises 'FlexAttention does not support backward on CPU'",
            ),
        )

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one backend per process; masks are small
    def block_mask(self, variant: CausalVariant | None, window: tuple[int, int] | None, Sq: int, Sk: int,
                   device: torch.device) -> object:
        """The block mask of ``variant`` and ``window`` for an ``Sq x Sk`` problem on ``device`` (same for every
        batch and head); None when every key is visible."""
        offset = causal_offset(variant, Sq, Sk)
        if window is None:
            return None if offset is None else self.create_block_mask(causal_mask_mod(offset), None, None, Sq, Sk,
                                                                       device=device)
        return self.create_block_mask(visibility_mask_mod(offset, window, Sk - Sq), None, None, Sq, Sk,
                                      device=device)

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """TorchAttention's forward with this call's variants in force (``forward`` reads ``call_variants``)."""
        self.call_variants = inp.variants
        return TorchAttention.attention.__wrapped__(self, inp)

    def recorded_forward(self, inp: ops.BackwardInputs, need_lse: bool = False
                         ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """TorchAttention's recorded forward (autograd through flex) with this call's variants in force: the
        backward and the prepared calls (``prepare_attention_backward``, ``prepare_attention_forward_backward``)
        of TorchAttention go through it."""
        self.call_variants = inp.variants
        with repeatable_backward():
            return super().recorded_forward(inp, need_lse)

    def gradients(self, out: torch.Tensor, leaves: list[torch.Tensor], dout: torch.Tensor, *,
                  retain_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """TorchAttention's gradients with donated buffers off here too: AOTAutograd may compile the backward
        at its first run, outside ``recorded_forward``, and a backward compiled with them refuses the prepared
        backward's ``retain_graph``."""
        with repeatable_backward():
            return super().gradients(out, leaves, dout, retain_graph=retain_graph)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one backend per process; masks are small
    def document_block_mask(self, variant: CausalVariant | None, window: tuple[int, int] | None,
                            offsets_q: tuple[int, ...], offsets_k: tuple[int, ...], device: torch.device) -> object:
        """The block mask of :func:`document_mask_mod` over the packed ``total_q x total_k`` tokens."""
        return self.create_block_mask(document_mask_mod(offsets_q, offsets_k, variant, window, device), None, None,
                                      offsets_q[-1], offsets_k[-1], device=device)

    @implementation("attention_varlen")
    def attention_varlen(self, inp: ops.VarlenInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """VLEN-1 as one flex call over the packed tokens, ``[total, H, D]`` as a batch of one
        ``[1, H, total, D]``, with the document block mask; lse ``[1, Hq, total_q]`` -> ``[Hq, total_q]``."""
        out, lse = self.packed_call(inp, inp.q, inp.k, inp.v, need_lse=True)
        return out, lse[0]

    @implementation("attention_varlen_backward")
    def attention_varlen_backward(self, inp: ops.VarlenBackwardInputs) -> tuple[torch.Tensor, ...]:
        """VLEN-4 by autograd through the packed flex call (forward recomputed); ``out`` and ``lse`` are
        validated, not used."""
        leaves = [x.detach().requires_grad_() for x in (inp.q, inp.k, inp.v)]
        with torch.enable_grad():
            recomputed, _ = self.packed_call(inp, *leaves, need_lse=False)
            return self.gradients(recomputed, leaves, inp.dout)

    def packed_call(self, inp: ops.VarlenInputs, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    need_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The flex call of a packed batch: ``out [total_q, Hq, D]`` and lse ``[1, Hq, total_q]`` (None unless
        asked for)."""
        mask = self.document_block_mask(inp.causal, inp.variants.window, inp.offsets_q, inp.offsets_k, q.device)
        score_mod = None if inp.variants.softcap is None else logit_score_mod(inp.variants.softcap, None, 0)
        out, lse = self.flex_call(*(x.transpose(0, 1)[None] for x in (q, k, v)), mask, inp.scale, score_mod,
                                  need_lse=need_lse)
        return out[0].transpose(0, 1).contiguous(), lse

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``flex_attention`` with the block mask of ``variant`` and the window, and the score_mod of the softcap
        and ALiBi of ``call_variants``; ``(out, lse)``, lse None unless asked for. ``bias`` is always None: the
        bias variant is not declared, so the boundary check refuses it."""
        extra = self.call_variants
        Sq, Sk = q.shape[2], k.shape[2]
        score_mod = None
        if extra.softcap is not None or extra.alibi_slopes is not None:
            score_mod = logit_score_mod(extra.softcap, extra.alibi_slopes, Sk - Sq)
        return self.flex_call(q, k, v, self.block_mask(variant, extra.window, Sq, Sk, q.device), scale, score_mod,
                              need_lse=need_lse)

    def flex_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: object, scale: float,
                  score_mod: Callable[..., torch.Tensor] | None, *, need_lse: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``flex_attention(q, k, v, score_mod, block_mask, scale, enable_gqa)`` on ``[B, H, S, D]`` tensors;
        ``(out, lse)``, lse None unless asked for."""
        kwargs: dict[str, object] = {"block_mask": block_mask, "scale": scale, "enable_gqa": k.shape[1] != q.shape[1]}
        if score_mod is not None:
            kwargs["score_mod"] = score_mod
        if need_lse:
            if self.aux_request is not None:
                kwargs["return_aux"] = self.aux_request(lse=True)
            else:
                kwargs["return_lse"] = True
        with warnings.catch_warnings():
            # eager flex warns on every call that it is not compiled; the notes say so once
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            result = self.call(q, k, v, **kwargs)
        if not need_lse:
            return result, None
        out, extra = result
        return out, (extra.lse if self.aux_request is not None else extra)


def backends() -> FlexBackend:
    """The ``flex`` backend on CUDA when there is a device, otherwise eagerly on the CPU."""
    return FlexBackend("cuda" if torch.cuda.is_available() else "cpu")
