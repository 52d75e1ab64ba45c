"""Mutant backends of the attention variants: ``reference-tiled`` with one planted defect each, which the
variant chapters (SPEC VAR, VLEN, DEC) must catch (``--backend tests.variant_mutants:NAME``).

- ``window_off_by_one``: the window's left edge one key too far left (``j >= i + Sk - Sq - left - 1``);
- ``leaking_varlen``: each sequence also attends to the first key of the next one (a tile read past its end);
- ``softcap_no_tanh_grad``: the softcap backward passes the gradient straight through, leaving out
  ``1 - tanh²(s / cap)``;
- ``split_kv_no_rescale``: split-KV partial outputs averaged instead of weighted by ``e^(L_s - L)``.

Each defect lives only in the operation it breaks, so the mutant passes every other clause.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from implementations import ops
from implementations.base import new_output, wide_dtype
from implementations.ops import implementation
from implementations.reference_tiled import TiledReferenceBackend
from implementations.tiled_decode import DEFAULT_SPLITS, _split, split_pages


class WindowOffByOne(TiledReferenceBackend):
    name = "mutant-window_off_by_one"

    @implementation("attention")
    def attention(self, inp: ops.AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        window = inp.variants.window
        if window is not None and window[0] >= 0:
            inp = dataclasses.replace(inp, variants=dataclasses.replace(inp.variants, window=(window[0] + 1,
                                                                                              window[1])))
        return super().attention.__wrapped__(self, inp)


@dataclasses.dataclass(frozen=True)
class _LeakyInputs(ops.VarlenInputs):
    """A varlen call whose every sequence's keys run one row into the next sequence's."""

    @property
    def sequences(self) -> list[tuple[slice, slice]]:
        total = self.k.shape[0]
        return [(rows, slice(keys.start, min(keys.stop + 1, total))) for rows, keys in super().sequences]


class LeakingVarlen(TiledReferenceBackend):
    name = "mutant-leaking_varlen"

    @implementation("attention_varlen")
    def attention_varlen(self, inp: ops.VarlenInputs) -> tuple[torch.Tensor, torch.Tensor]:
        leaky = _LeakyInputs(**{f.name: getattr(inp, f.name) for f in dataclasses.fields(inp)})
        return super().attention_varlen.__wrapped__(self, leaky)


class SoftcapNoTanhGrad(TiledReferenceBackend):
    name = "mutant-softcap_no_tanh_grad"

    @implementation("attention_backward")
    def attention_backward(self, inp: ops.BackwardInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autograd in float64 of attention whose capped logits carry the gradient of the uncapped ones (bias and
        ALiBi are left to the correct backward: only softcap cases take this path)."""
        cap = inp.variants.softcap
        if cap is None:
            return super().attention_backward.__wrapped__(self, inp)
        leaves = [x.detach().double().requires_grad_() for x in (inp.q, inp.k, inp.v)]
        with torch.enable_grad():
            q, k, v = leaves
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            s = inp.scale * q @ k.transpose(-1, -2)
            s = s + (cap * torch.tanh(s / cap) - s).detach()  # the defect: d capped / d s taken as 1
            Sq, Sk = s.shape[-2:]
            i, j = torch.arange(Sq)[:, None], torch.arange(Sk)[None, :]
            hidden = torch.zeros(Sq, Sk, dtype=torch.bool)
            if inp.causal is not None:
                hidden |= j > i + (0 if inp.causal == "top_left" else Sk - Sq)
            left, right = inp.variants.window or (-1, -1)
            if left >= 0:
                hidden |= j < i + Sk - Sq - left
            if right >= 0:
                hidden |= j > i + Sk - Sq + right
            p = torch.softmax(s.masked_fill(hidden, float("-inf")), dim=-1).nan_to_num(0.0)
            grads = torch.autograd.grad(p @ v, leaves, inp.dout.double())
        return tuple(g.to(x.dtype) for g, x in zip(grads, (inp.q, inp.k, inp.v)))  # type: ignore[return-value]


class SplitKVNoRescale(TiledReferenceBackend):
    name = "mutant-split_kv_no_rescale"

    @implementation("attention_decode_paged")
    def attention_decode_paged(self, inp: ops.DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Split-KV whose partial outputs are averaged (the lse merged right)."""
        q = inp.q
        out = new_output(q.shape, q.dtype, q.device)
        lse = new_output(q.shape[:3], wide_dtype(q.dtype), q.device)
        Hk, Sq = inp.k_pages.shape[2], q.shape[2]
        G = q.shape[1] // Hk
        for b, length in enumerate(inp.lengths):
            q_b = q[b:b + 1].unflatten(1, (Hk, G)).to(wide_dtype(q.dtype)).numpy().reshape(1, Hk, G * Sq, -1)
            pages = -(-length // inp.page_size)
            splits = split_pages(pages, inp.num_splits or min(DEFAULT_SPLITS, pages))
            partials = [_split(inp, b, q_b, slots) for slots in splits]
            seen = [(o, l) for o, l in partials if np.isfinite(l).any()]
            o_b = sum(o for o, _ in seen) / len(seen)  # the defect: no e^(L_s - L) weights
            lse_b = np.logaddexp.reduce(np.stack([l for _, l in partials]), axis=0)
            out[b].copy_(torch.from_numpy(o_b.reshape(q.shape[1], Sq, -1)))
            lse[b].copy_(torch.from_numpy(lse_b.reshape(q.shape[1], Sq)))
        return out, lse


def window_off_by_one() -> WindowOffByOne:
    return WindowOffByOne()


def leaking_varlen() -> LeakingVarlen:
    return LeakingVarlen()


def softcap_no_tanh_grad() -> SoftcapNoTanhGrad:
    return SoftcapNoTanhGrad()


def split_kv_no_rescale() -> SplitKVNoRescale:
    return SplitKVNoRescale()


#: mutant -> (the conformance test that must catch it, its clause, tests of other clauses it must pass)
VARIANT_MUTANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "window_off_by_one": ("conformance/test_variants.py::test_window", "VAR-1",
                          ("conformance/test_variants.py::test_alibi",
                           "conformance/test_decode.py::test_paged_decode")),
    "leaking_varlen": ("conformance/test_varlen.py::test_no_leakage", "VLEN-2",
                       ("conformance/test_variants.py::test_window",)),
    "softcap_no_tanh_grad": ("conformance/test_variants.py::test_softcap_gradients", "VAR-5",
                             ("conformance/test_variants.py::test_softcap",
                              "conformance/test_variants.py::test_window_gradients")),
    "split_kv_no_rescale": ("conformance/test_decode.py::test_split_kv_merge", "DEC-2",
                            ("conformance/test_varlen.py::test_each_sequence_on_its_own",)),
}
