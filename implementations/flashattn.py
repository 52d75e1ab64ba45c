"""FlashAttention-2 (the ``flash-attn`` package, ``flash_attn_func``) as the ``flash-attn`` backend (CUDA only).

Mapping of the contract's ``attention(q, k, v, causal, scale)`` (``[B, H, S, D]``) onto flash-attn (``[B, S, H, D]``):

- ``out, lse, _ = flash_attn_func(q', k', v', dropout_p=0.0, softmax_scale=scale, causal=causal is not None,
  return_attn_probs=True)`` with ``q' = q.transpose(1, 2)``; ``lse`` is the kernel's ``softmax_lse``
  (natural log, float32, ``[B, H, Sq]``). ``return_attn_probs=True`` is how the function hands out the lse;
  with dropout 0 its third output is not used.
- causal (SPEC ATT-3): flash-attn >= 2.1 aligns its causal mask bottom-right (key j visible to query i iff
  ``j <= i + Sk - Sq``), so only ``bottom_right`` is declared, and it is the default.
- GQA (ATT-6): native (``Hq % Hk == 0``, query head h reads KV head ``h // (Hq // Hk)``).
- backward (GRAD): autograd through ``flash_attn_func`` with ``dout`` (forward recomputed in the call).

Nothing is corrected here; deviations are findings in ``conformance/xfails/flash-attn.txt``.
"""

from __future__ import annotations

import torch
from torch.torch_version import TorchVersion

from implementations.base import BackendUnavailable, Capabilities, CausalVariant
from implementations.packages import import_attribute, installed_version, require_cuda
from implementations.torch_sdpa.common import TorchAttention

DTYPES = (torch.float16, torch.bfloat16)
#: the first release whose causal mask is bottom-right aligned for Sq != Sk
BOTTOM_RIGHT_SINCE = (2, 1)


def load_flash_attn_func() -> tuple[object, str]:
    """``(flash_attn_func, version)``; BackendUnavailable without the package, a GPU or a recent enough release."""
    version = installed_version("flash-attn", "pip install 'attnspec[flash-attn]' builds it against the installed "
                                "torch; needs CUDA and nvcc")
    if TorchVersion(version) < BOTTOM_RIGHT_SINCE:
        raise BackendUnavailable(f"flash-attn {version} is older than 2.1 (top-left causal mask for Sq != Sk)")
    require_cuda(f"flash-attn {version}")
    return import_attribute("flash_attn", "flash_attn_func", f"flash-attn {version}"), version


class FlashAttnBackend(TorchAttention):
    """``flash_attn_func`` of FlashAttention-2 (the module docstring gives the mapping)."""

    name = "flash-attn"

    def __init__(self) -> None:
        self.flash_attn_func, version = load_flash_attn_func()
        self.description = f"flash-attn {version} flash_attn_func (FlashAttention-2), CUDA"
        self.capabilities = Capabilities(
            devices=("cuda",), dtypes=DTYPES, backward_dtypes=DTYPES, head_dims=(1, 256),
            causal=("bottom_right",), causal_default="bottom_right", memory="linear", saves="lse",
            notes=(
                f"flash-attn {version}, torch {torch.__version__}: flash_attn_func(return_attn_probs=True); lse "
                "is the kernel's softmax_lse; backward by autograd through flash_attn_func",
                "causal: bottom_right only (flash-attn >= 2.1 aligns its causal mask bottom-right)",
                "GQA: native",
            ),
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """flash-attn's output as ``[B, Hq, Sq, D]`` and, when asked, its lse ``[B, Hq, Sq]``.
        ``bias`` is always None (not declared: the boundary check refuses it)."""
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        result = self.flash_attn_func(qt, kt, vt, dropout_p=0.0, softmax_scale=scale, causal=variant is not None,
                                      return_attn_probs=need_lse)
        if not need_lse:
            return result.transpose(1, 2), None
        out, lse, _ = result
        return out.transpose(1, 2), lse


def backends() -> FlashAttnBackend:
    """The ``flash-attn`` backend; BackendUnavailable without the package or a CUDA device."""
    return FlashAttnBackend()
