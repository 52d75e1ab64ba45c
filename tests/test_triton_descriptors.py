"""The Triton attention kernels' tensor-descriptor path (``LaunchConfig.tma``), run on the interpreter.

On the GPU the descriptor path is taken for 16-bit inputs on Hopper; CI has no GPU, so these tests force it on
the interpreter (which models the copy engine's zero fill past the tensor) and hold it to the pointer path,
bit for bit, and to a float64 oracle. They also try inputs the copy engine cannot describe, which must fall
back to pointer loads, and the device guard that keeps descriptors off pre-Hopper GPUs.
"""

from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():  # there the compiled path runs: the backend's GPU tests and conformance check it
    pytest.skip("the descriptor path is forced on the interpreter only where no GPU is", allow_module_level=True)
os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from implementations.base import poisoned_outputs  # noqa: E402
from implementations.triton import attention_bwd, attention_fwd  # noqa: E402
from implementations.triton.attention_bwd import BackwardConfig, attention_backward, backward_config  # noqa: E402
from implementations.triton.attention_fwd import attention_forward, forward_config  # noqa: E402
from implementations.triton.common import SMEM_BUDGET, LaunchConfig, tma_eligible  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the descriptor path is forced on CPU tensors, which needs the interpreter", allow_module_level=True)

BF16 = torch.bfloat16
POINTERS = LaunchConfig(32, 32, 4, 1)
DESCRIPTORS = LaunchConfig(32, 32, 4, 1, tma=True)

# (B, Hq, Hk, Sq, Sk, D, causal, scale): ragged blocks, D below its power-of-two tile, GQA, rows with no visible
# key (bottom-right with Sq > Sk), and scales <= 0 that take the unfolded softmax
CASES = [
    (1, 2, 1, 70, 100, 80, "bottom_right", 0.2),
    (1, 2, 2, 96, 40, 64, "bottom_right", 0.125),
    (2, 2, 2, 64, 64, 32, "top_left", 0.18),
    (1, 1, 1, 50, 33, 16, None, -0.3),
    (1, 2, 1, 40, 72, 48, None, 0.0),
]


def case_id(case: tuple) -> str:
    B, Hq, Hk, Sq, Sk, D, causal, scale = case
    return f"B{B}H{Hq}k{Hk}-{Sq}x{Sk}-D{D}-{causal or 'full'}-s{scale}"


def inputs(case: tuple, seed: int) -> tuple[torch.Tensor, ...]:
    B, Hq, Hk, Sq, Sk, D, *_ = case
    gen = torch.Generator().manual_seed(seed)
    shapes = ((B, Hq, Sq, D), (B, Hk, Sk, D), (B, Hk, Sk, D), (B, Hq, Sq, D))
    return tuple(torch.randn(s, generator=gen).to(BF16) for s in shapes)


def oracle(q, k, v, dout, causal, scale):
    """float64 ``out`` and ``(dq, dk, dv)``; rows with no visible key give 0."""
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    kk, vv = k64.repeat_interleave(group, 1), v64.repeat_interleave(group, 1)
    s = q64 @ kk.transpose(-1, -2) * scale
    if causal is not None:
        sq, sk = s.shape[-2:]
        off = sk - sq if causal == "bottom_right" else 0
        hidden = torch.arange(sk)[None, :] > torch.arange(sq)[:, None] + off
        s = s.masked_fill(hidden, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1))
    out = p @ vv
    out.backward(dout.double())
    return out.detach(), (q64.grad, k64.grad, v64.grad)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_descriptor_path_equals_pointer_path(case):
    """Forward and backward through tensor descriptors give the pointer path's results exactly."""
    *_, causal, scale = case
    q, k, v, dout = inputs(case, 1)
    with poisoned_outputs():
        out_p, lse_p = attention_forward(q, k, v, causal, scale, POINTERS)
        out_t, lse_t = attention_forward(q, k, v, causal, scale, DESCRIPTORS)
        grads_p = attention_backward(q, k, v, out_p, lse_p, dout, causal, scale, BackwardConfig(POINTERS, POINTERS))
        grads_t = attention_backward(q, k, v, out_p, lse_p, dout, causal, scale,
                                     BackwardConfig(DESCRIPTORS, DESCRIPTORS))
    assert not torch.isnan(out_t).any() and not torch.isnan(lse_t).any()
    assert torch.equal(out_t, out_p) and torch.equal(lse_t, lse_p)
    for name, gt, gp in zip(("dq", "dk", "dv"), grads_t, grads_p):
        assert not torch.isnan(gt).any(), f"{name}: unwritten elements"
        assert torch.equal(gt, gp), f"{name} differs between descriptor and pointer loads"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_descriptor_path_matches_oracle(case):
    """ATT-1..ATT-6, GRAD-1: the descriptor path against float64 (bf16 output rounding bounds the error)."""
    *_, causal, scale = case
    q, k, v, dout = inputs(case, 2)
    out, lse = attention_forward(q, k, v, causal, scale, DESCRIPTORS)
    grads = attention_backward(q, k, v, out, lse, dout, causal, scale, BackwardConfig(DESCRIPTORS, DESCRIPTORS))
    ref_out, ref_grads = oracle(q, k, v, dout, causal, scale)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
        bound = 2e-2 * max(float(ref.abs().max()), 1e-3)
        error = float((got.double() - ref).abs().max())
        assert error <= bound, f"{name}: max error {error:.3e} > {bound:.3e}"


def misaligned(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values in a view starting one element (2 bytes) past a 16-byte boundary."""
    flat = torch.empty(x.numel() + 8, dtype=x.dtype)
    view = flat[1:1 + x.numel()].view(x.shape)
    view.copy_(x)
    return view


def test_tma_eligible_follows_the_tensor_map_rules():
    """16-bit, unit stride along D, 16-byte aligned start and strides; anything else is refused."""
    x = torch.randn(1, 2, 24, 64).to(BF16)
    assert tma_eligible(x)
    assert not tma_eligible(x.float())
    assert not tma_eligible(x.transpose(-1, -2).contiguous().transpose(-1, -2))  # D strided
    assert not tma_eligible(torch.randn(1, 2, 24, 44).to(BF16)[..., :40])  # rows 88 bytes apart
    assert not tma_eligible(misaligned(x))
    assert tma_eligible(torch.randn(1, 2, 24, 72).to(BF16)[..., :64])  # rows 144 bytes apart


@pytest.mark.parametrize("layout", ["d_strided", "unaligned_rows", "misaligned_start"])
def test_ineligible_inputs_fall_back_to_pointer_loads(layout):
    """A descriptor config on inputs the copy engine cannot describe still gives the pointer path's result."""
    case = (1, 2, 2, 40, 56, 40, "top_left", 0.15)
    q, k, v, dout = inputs(case, 3)
    if layout == "d_strided":
        k = k.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "unaligned_rows":
        wide = torch.zeros(*k.shape[:-1], 44, dtype=BF16)
        wide[..., :40] = k
        k = wide[..., :40]
    else:
        k = misaligned(k)
    assert not tma_eligible(k)
    out_p, lse_p = attention_forward(q, k, v, "top_left", 0.15, POINTERS)
    out_t, lse_t = attention_forward(q, k, v, "top_left", 0.15, DESCRIPTORS)
    assert torch.equal(out_t, out_p) and torch.equal(lse_t, lse_p)
    grads_p = attention_backward(q, k, v, out_p, lse_p, dout, "top_left", 0.15, BackwardConfig(POINTERS, POINTERS))
    grads_t = attention_backward(q, k, v, out_p, lse_p, dout, "top_left", 0.15,
                                 BackwardConfig(DESCRIPTORS, DESCRIPTORS))
    assert all(torch.equal(a, b) for a, b in zip(grads_t, grads_p))


@pytest.mark.parametrize("hopper", [True, False])
def test_descriptor_configs_only_on_devices_that_have_them(monkeypatch, hopper):
    """The D=128 GPU configs stream through descriptors on compute capability 9+, through pointers before."""
    for module in (attention_fwd, attention_bwd):
        monkeypatch.setattr(module, "has_tensor_descriptors", lambda device: hopper)
    cuda = torch.device("cuda")
    fwd = forward_config(128, BF16, cuda)
    bwd = backward_config(128, BF16, cuda)
    assert fwd.tma == bwd.dkdv.tma == bwd.dq.tma == hopper
    assert not forward_config(128, torch.float32, cuda).tma  # float32 runs exact FMA products from registers
    assert not forward_config(128, BF16, torch.device("cpu")).tma


def test_tiles_override_keeps_the_load_path_and_fits_shared_memory(monkeypatch):
    """ATT-7 tiles replace the tile of a descriptor config; its stages drop until the tiles fit the budget."""
    monkeypatch.setattr(attention_fwd, "has_tensor_descriptors", lambda device: True)
    cfg = forward_config(128, BF16, torch.device("cuda"), tiles=(128, 128))
    row = 128 * 2
    assert (cfg.block_m, cfg.block_n, cfg.tma) == (128, 128, True)
    assert cfg.num_stages * 2 * 128 * row + 128 * row <= SMEM_BUDGET or cfg.num_stages == 1
