"""xFormers' memory-efficient attention (``xformers.ops.fmha``) as the ``xformers`` backend (CUDA only).

Mapping of the contract's ``attention(q, k, v, causal, scale)`` (``[B, H, S, D]``) onto xFormers (``[B, S, H, D]``,
"BMHK"):

- ``out, lse = fmha.memory_efficient_attention_forward_requires_grad(q', k', v', attn_bias, scale=scale)``
  with ``q' = q.transpose(1, 2)`` (a view, no copy); ``lse`` is xFormers' own, natural log, ``[B, H, Sq]``
  (kernels may pad Sq: sliced to Sq, never recomputed); xFormers picks its kernel (flash, cutlass, ...) itself.
- causal (SPEC ATT-3): ``attn_bias = fmha.attn_bias.LowerTriangularMask()`` (top-left) or
  ``LowerTriangularFromBottomRightMask()`` (bottom-right); no causal: ``None``.
- GQA (ATT-6): xFormers' 5-D "BMGHK" layout, ``G = Hk`` groups of ``Hq // Hk`` query heads: ``q`` viewed as
  ``[B, Sq, Hk, Hq // Hk, D]`` and ``k, v`` as ``[B, Sk, Hk, 1, D]`` expanded (stride 0) over the group, so query
  head ``h`` reads KV head ``h // (Hq // Hk)``; ``lse [B, Hk, Hq // Hk, Sq]`` is reshaped to ``[B, Hq, Sq]``.
- backward (GRAD): autograd through ``fmha.memory_efficient_attention`` with ``dout`` (forward recomputed in
  the call); the ``out`` and ``lse`` arguments are validated, not used.

Availability: a wheel built for another torch or Python imports, logs "xFormers can't load C++/CUDA
extensions. xFormers was built for: ...", and then every call raises ``NotImplementedError: No operator found``.
So the factory makes one tiny call (``[1, 1, 1, 8]`` bf16 on CUDA) and reports such a package unavailable,
quoting xFormers' own messages; kernels that cannot load are not a kernel deviation.

Nothing is corrected here; deviations are findings in ``conformance/xfails/xformers.txt``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from implementations.base import BackendUnavailable, Capabilities, CausalVariant
from implementations.packages import import_attribute, installed_version, require_cuda
from implementations.torch_sdpa.common import TorchAttention, lse_as_b_h_sq

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@contextlib.contextmanager
def logged_by_xformers() -> Iterator[list[str]]:
    """The messages the ``xformers`` logger emits inside the block (its "built for" warning at import), in
    order; the logger's own handlers still see them."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("xformers").addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger("xformers").removeHandler(handler)


def build_mismatch(messages: list[str]) -> str:
    """xFormers' "can't load C++/CUDA extensions ... built for ... (you have ...)" lines as one line, or ''."""
    for message in messages:
        if "can't load C++/CUDA extensions" in message:
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            kept = [line for line in lines if "can't load" in line or "you have" in line]
            return " ".join(kept).removeprefix("WARNING[XFORMERS]: ")
    return ""


def probe_input() -> torch.Tensor:
    """The tiny problem the factory asks xFormers to run: one bf16 ``[1, 1, 1, 8]`` BMHK tensor on CUDA."""
    return torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16, device="cuda")


def require_kernels(fmha: object, package: str, import_messages: list[str]) -> None:
    """BackendUnavailable when xFormers has no operator for a tiny bf16 CUDA input (its extensions did not
    load): the reason quotes the NotImplementedError's first line and xFormers' "built for" message."""
    x = probe_input()
    try:
        fmha.memory_efficient_attention_forward(x, x, x)  # type: ignore[attr-defined]
    except NotImplementedError as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        mismatch = build_mismatch(import_messages)
        raise BackendUnavailable(f"{package} has no usable kernel for a [1, 1, 1, 8] bf16 CUDA input: "
                                 f"NotImplementedError: {first_line}" + (f" ({mismatch})" if mismatch else "")
                                 ) from exc


def load_fmha() -> tuple[object, str]:
    """``(xformers.ops.fmha, version)``; BackendUnavailable when xFormers is missing, there is no GPU, it does
    not import, or its kernels do not load (:func:`require_kernels`)."""
    version = installed_version("xformers", "pip install 'attnspec[xformers]'")
    package = f"xformers {version}"
    require_cuda(package)
    with logged_by_xformers() as import_messages:
        fmha = import_attribute("xformers.ops", "fmha", package)
    require_kernels(fmha, package, import_messages)
    return fmha, version


def to_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, H, S, D]`` views as BMHK, or as BMGHK (``G = Hk`` groups, K and V expanded) when Hk < Hq."""
    B, Hq, Sq, D = q.shape
    Hk, Sk = k.shape[1], k.shape[2]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if Hk == Hq:
        return qt, kt, vt
    group = Hq // Hk
    return (qt.reshape(B, Sq, Hk, group, D), kt.unsqueeze(3).expand(B, Sk, Hk, group, D),
            vt.unsqueeze(3).expand(B, Sk, Hk, group, D))


class XformersBackend(TorchAttention):
    """``memory_efficient_attention`` of xFormers (the module docstring gives the mapping)."""

    name = "xformers"

    def __init__(self) -> None:
        self.fmha, version = load_fmha()
        self.description = f"xFormers {version} memory_efficient_attention (its own kernel choice), CUDA"
        self.capabilities = Capabilities(
            devices=("cuda",), dtypes=DTYPES, backward_dtypes=DTYPES, head_dims=(8, 256), head_dim_multiple=8,
            memory="linear", saves="lse",
            notes=(
                f"xformers {version}, torch {torch.__version__}: fmha.memory_efficient_attention_forward_"
                "requires_grad (out, lse); backward by autograd through memory_efficient_attention",
                "causal: LowerTriangularMask (top_left), LowerTriangularFromBottomRightMask (bottom_right)",
                "GQA: BMGHK layout, K and V expanded (stride 0) over each group of Hq // Hk query heads",
                "head dims: multiples of 8 up to 256 declared (the kernels xFormers dispatches to need "
                "aligned head dims; others not checked)",
            ),
        )

    def bias(self, variant: CausalVariant | None) -> object:
        """xFormers' attention bias for ``variant`` (ATT-3)."""
        if variant is None:
            return None
        masks = self.fmha.attn_bias
        return masks.LowerTriangularMask() if variant == "top_left" else masks.LowerTriangularFromBottomRightMask()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """xFormers' output as ``[B, Hq, Sq, D]`` and, when asked, its lse as ``[B, Hq, Sq]``.
        ``bias`` is always None (not declared: the boundary check refuses it)."""
        B, Hq, Sq, D = q.shape
        xq, xk, xv = to_xformers(q, k, v)
        if not need_lse:
            out = self.fmha.memory_efficient_attention(xq, xk, xv, attn_bias=self.bias(variant), scale=scale)
            return out.reshape(B, Sq, Hq, D).transpose(1, 2), None
        out, lse = self.fmha.memory_efficient_attention_forward_requires_grad(
            xq, xk, xv, attn_bias=self.bias(variant), scale=scale)
        known = lse_as_b_h_sq(lse.reshape(B, Hq, lse.shape[-1]) if lse.dim() == 4 else lse, B, Hq, Sq)
        if known is None:
            raise RuntimeError(f"xformers returned an lse of shape {tuple(lse.shape)}, not [B, H, >= Sq]")
        return out.reshape(B, Sq, Hq, D).transpose(1, 2), known


def backends() -> XformersBackend:
    """The ``xformers`` backend; BackendUnavailable without the package or a CUDA device."""
    return XformersBackend()
