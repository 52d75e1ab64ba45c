"""FlashInfer's single-request prefill (``flashinfer.single_prefill_with_kv_cache``) as the ``flashinfer``
backend (CUDA only, forward only: FlashInfer has no backward).

Mapping of the contract's ``attention(q, k, v, causal, scale)`` (``[B, H, S, D]``) onto FlashInfer (one request,
``[S, H, D]``, ``kv_layout="NHD"``):

- for each batch entry b: ``out_b, lse_b = single_prefill_with_kv_cache(q_b, k_b, v_b, causal=causal is not
  None, sm_scale=scale, return_lse=True)`` with ``q_b = q[b].transpose(0, 1)`` made contiguous; the outputs are
  stacked back to ``[B, H, Sq, D]`` and ``[B, H, Sq]``. One call per request is FlashInfer's single-request API
  (its batch API takes paged or ragged KV).
- lse: FlashInfer returns the log-sum-exp in base 2 (``log2 Σ 2^(s·log2 e)``); the contract's lse is the
  natural log, so it is multiplied by ``ln 2``. This is a change of unit, said in the notes, not a correction.
- causal (SPEC ATT-3): FlashInfer aligns its causal mask bottom-right (query i sees keys
  ``j <= i + Sk - Sq``), so only ``bottom_right`` is declared.
- GQA (ATT-6): native (``num_qo_heads % num_kv_heads == 0``).

Nothing else is changed; deviations are findings in ``conformance/xfails/flashinfer.txt``.
"""

from __future__ import annotations

import math

import torch

from implementations.base import Capabilities, CausalVariant
from implementations.packages import import_attribute, installed_version, require_cuda
from implementations.torch_sdpa.common import TorchAttention

DTYPES = (torch.float16, torch.bfloat16)
#: FlashInfer compiles a kernel per head dim; the ones its prebuilt kernels cover
HEAD_DIMS = (64, 128, 256)


def load_single_prefill() -> tuple[object, str]:
    """``(single_prefill_with_kv_cache, version)``; BackendUnavailable without the package or a GPU."""
    version = installed_version("flashinfer-python", "pip install 'attnspec[flashinfer]'")
    require_cuda(f"flashinfer {version}")
    return import_attribute("flashinfer", "single_prefill_with_kv_cache", f"flashinfer {version}"), version


class FlashInferBackend(TorchAttention):
    """``single_prefill_with_kv_cache`` per batch entry (the module docstring gives the mapping)."""

    name = "flashinfer"

    def __init__(self) -> None:
        self.prefill, version = load_single_prefill()
        self.description = f"FlashInfer {version} single_prefill_with_kv_cache, one call per batch entry, CUDA"
        self.capabilities = Capabilities(
            devices=("cuda",), dtypes=DTYPES, backward_dtypes=(), head_dims=(64, 256), head_dim_set=HEAD_DIMS,
            causal=("bottom_right",), causal_default="bottom_right", memory="linear", saves="lse",
            notes=(
                f"flashinfer {version}, torch {torch.__version__}: single_prefill_with_kv_cache(kv_layout='NHD', "
                "return_lse=True) per batch entry",
                "lse: FlashInfer's is base 2; multiplied by ln 2 to the contract's natural log",
                "causal: bottom_right only (FlashInfer's causal mask is bottom-right aligned)",
                "no backward: FlashInfer is an inference library",
            ),
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: CausalVariant | None,
                scale: float, *, need_lse: bool, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs of one prefill per batch entry, stacked to ``[B, Hq, Sq, D]`` and ``[B, Hq, Sq]`` (natural log).
        ``bias`` is always None (not declared: the boundary check refuses it)."""
        outs, lses = [], []
        for b in range(q.shape[0]):
            qb, kb, vb = (x[b].transpose(0, 1).contiguous() for x in (q, k, v))
            out, lse = self.prefill(qb, kb, vb, causal=variant is not None, sm_scale=scale, kv_layout="NHD",
                                    return_lse=True)
            outs.append(out.transpose(0, 1))
            lses.append(lse.transpose(0, 1))
        return torch.stack(outs), torch.stack(lses) * math.log(2) if need_lse else None


def backends() -> FlashInferBackend:
    """The ``flashinfer`` backend; BackendUnavailable without the package or a CUDA device."""
    return FlashInferBackend()
