"""Tests of the Triton backend's row kernels (``implementations/triton``): softmax statistics and merge, the
KD loss and reduce_sum's schedule, against float64 oracles, on the interpreter or on CUDA
(``tests/triton_setup.py``).
"""

from __future__ import annotations

import math

from tests.triton_setup import BF16, DEVICE, F32, ON_CUDA, generator, randn  # isort: skip  (sets up Triton)
import numpy as np
import pytest
import torch

from implementations.base import poisoned_outputs
from implementations.schedule import pairwise_tree
from implementations.triton import backends
from implementations.triton.kd_loss import kd_loss
from implementations.triton.reduce import (
    GPU_REDUCE,
    INTERPRETER_REDUCE,
    SCHEDULE_KIND,
    strided_schedule,
    strided_sum,
)


@pytest.fixture(scope="module")
def backend():
    return backends()


def stats_oracle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.cpu().double()
    m = x.max(1).values
    return m, torch.exp(x - torch.where(torch.isinf(m), 0.0, m)[:, None]).sum(1)


@pytest.mark.parametrize("block", [None, 7, 64])
def test_softmax_stats(backend, block):
    """SMX-1, SMX-5: exact max, l within float32 noise of the float64 oracle, for odd block sizes."""
    cols = 4099 if ON_CUDA else 700
    x = randn((6, cols), F32, generator("stats", block))
    x[1] = float("-inf")
    x[2] = float("-inf")
    x[2, 17] = 3.0
    x[3] *= 1e4
    x[4, ::2] = float("-inf")
    with poisoned_outputs():
        m, l = backend.softmax_stats(x, block=block)
    ref_m, ref_l = stats_oracle(x)
    assert torch.equal(m.cpu().double(), ref_m)
    assert m[1] == float("-inf") and l[1] == 0 and l[2] == 1
    assert torch.allclose(l.cpu().double(), ref_l, rtol=4e-6, atol=0)


def test_softmax_stats_16bit(backend):
    """SMX-1 for bfloat16 rows: statistics in float32."""
    x = randn((3, 700), BF16, generator("stats16"))
    m, l = backend.softmax_stats(x)
    ref_m, ref_l = stats_oracle(x)
    assert m.dtype == torch.float32 and torch.equal(m.cpu().double(), ref_m)
    assert torch.allclose(l.cpu().double(), ref_l, rtol=4e-6, atol=0)


def test_softmax_merge(backend):
    """SMX-2, SMX-3: the merge law, its identity, and blocks merged into the one-shot statistics."""
    x = randn((4, 300), F32, generator("merge"))
    parts = [backend.softmax_stats(x[:, a:b]) for a, b in ((0, 100), (100, 230), (230, 300))]
    m, l = backend.softmax_merge(*parts[0], *backend.softmax_merge(*parts[1], *parts[2]))
    ref_m, ref_l = stats_oracle(x)
    assert torch.equal(m.cpu().double(), ref_m) and torch.allclose(l.cpu().double(), ref_l, rtol=4e-6, atol=0)
    ninf = torch.full((4,), float("-inf"), device=DEVICE)
    zero = torch.zeros(4, device=DEVICE)
    m0, l0 = backend.softmax_merge(ninf, zero, ninf, zero)
    assert torch.all(m0 == float("-inf")) and torch.all(l0 == 0)
    m1, l1 = backend.softmax_merge(*parts[0], ninf, zero)
    assert torch.equal(m1, parts[0][0]) and torch.equal(l1, parts[0][1])


# ------------------------------------------------------------------------------------------------
# KD loss


def kd_oracle(s, t, temperature, alpha, labels, ignore_index=-100):
    """float64 KD-1 loss and its autograd ds."""
    s64 = s.cpu().double().requires_grad_()
    t64 = t.cpu().double()
    kl = torch.nn.functional.kl_div(torch.log_softmax(s64 / temperature, -1), torch.log_softmax(t64 / temperature, -1),
                                    log_target=True, reduction="none").sum(-1) * temperature**2
    if labels is None:
        loss = kl.mean()
    else:
        lab = labels.cpu()
        keep = (lab != ignore_index).double()
        ce = torch.nn.functional.cross_entropy(s64, lab.clamp(min=0), reduction="none")
        loss = ((alpha * kl + (1 - alpha) * ce) * keep).sum() / keep.sum().clamp(min=1)
    loss.backward()
    return loss.detach(), s64.grad


#: ``kd_loss`` with the device's defaults, and with parts of 1024 columns in 256-column steps (on the GPU the
#: rows below then have several parts that wait on each other; the interpreter always runs one part per row)
KD_PATHS = {"defaults": {}, "parts-1024": {"chunk": 1024, "block": 256}}


@pytest.mark.parametrize("path", KD_PATHS)
@pytest.mark.parametrize("vocab", [1000, 3001])
@pytest.mark.parametrize("temperature,alpha,with_labels", [(2.0, 1.0, False), (1.5, 0.3, True), (1.0, 0.0, True)])
def test_kd_loss(vocab, temperature, alpha, with_labels, path):
    """KD-1, KD-2, KD-7: fused loss and ds against float64 for V not a multiple of the block."""
    rows = 64 if ON_CUDA else 6
    gen = generator("kd", vocab, temperature, alpha)
    s = randn((rows, vocab), F32, gen, 3.0)
    t = randn((rows, vocab), F32, gen, 3.0)
    labels = torch.randint(0, vocab, (rows,), generator=gen).to(DEVICE) if with_labels else None
    if labels is not None:
        labels[2] = -100
    alpha = alpha if with_labels else 1.0
    with poisoned_outputs():
        loss, ds = kd_loss(s, t, temperature=temperature, alpha=alpha, labels=labels, ignore_index=-100,
                           ds_shape=s.shape, **KD_PATHS[path])
    ref_loss, ref_ds = kd_oracle(s, t, temperature, alpha, labels)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and ds.shape == s.shape
    assert abs(float(loss) - float(ref_loss)) <= 2e-6 * max(1.0, abs(float(ref_loss)))
    assert float((ds.cpu().double() - ref_ds).abs().max()) <= 1e-7
    if labels is not None:
        assert torch.all(ds[2] == 0)
    if alpha == 1.0:
        assert float(ds.double().sum(-1).abs().max()) <= 1e-6  # KD-2: sums to 0 over V


def test_kd_loss_teacher_rows_starting_with_minus_inf(backend):
    """KD-1: teacher logits of -inf (a masked vocabulary) filling the first blocks of a row give finite,
    correct loss and ds: nothing computes -inf - -inf."""
    gen = generator("kd-inf")
    s = randn((4, 700), F32, gen, 2.0)
    t = randn((4, 700), F32, gen, 2.0)
    t[:, :600] = float("-inf")
    loss, ds = kd_loss(s, t, temperature=2.0, alpha=1.0, labels=None, ignore_index=-100, ds_shape=s.shape, block=256)
    s64 = s.cpu().double().requires_grad_()
    log_ps, log_pt = torch.log_softmax(s64 / 2.0, -1), torch.log_softmax(t.cpu().double() / 2.0, -1)
    terms = torch.where(log_pt > float("-inf"), log_pt.exp() * (log_pt - log_ps), 0.0)  # 0 log 0 = 0
    ref_loss = terms.sum(-1).mean() * 4.0
    (ref_ds,) = torch.autograd.grad(ref_loss, s64)
    assert torch.isfinite(loss) and bool(torch.isfinite(ds).all())
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    assert float((ds.cpu().double() - ref_ds).abs().max()) <= 1e-7


def test_kd_loss_shifts_and_3d(backend):
    """KD-3, KD-4: s = t + c gives loss 0 and ds 0; [B, L, V] logits are flattened to rows."""
    gen = generator("kd3")
    t = randn((2, 3, 517), F32, gen)
    s = t + randn((2, 3, 1), F32, gen) * 5
    loss, ds = backend.kd_loss(s, t, temperature=3.0)
    assert ds.shape == s.shape and 0.0 <= float(loss) <= 1e-6 and float(ds.abs().max()) <= 1e-7


# ------------------------------------------------------------------------------------------------
# reduction


@pytest.mark.parametrize("n", [1, 2, 3, 64, 1000, 1025, 4097, 70001])
def test_reduce_sum_follows_schedule(backend, n):
    """WD-1, WD-2: bit-identical to the declared schedule evaluated in float32; W = n - 1, and the schedule's
    depth is the pairwise tree's up to one program's lanes, the lanes' rows plus the tree's levels beyond."""
    x = randn((n,), F32, generator("reduce", n))
    with poisoned_outputs():
        value, schedule = backend.reduce_sum(x)
    assert value.dim() == 0 and value.dtype == torch.float32
    expected = schedule.evaluate(x.cpu().numpy())
    assert np.float32(value.item()).tobytes() == np.float32(expected).tobytes()
    assert schedule.work == n - 1 and schedule.kind == SCHEDULE_KIND
    rows, lanes, _ = GPU_REDUCE if ON_CUDA else INTERPRETER_REDUCE
    if n <= lanes:
        assert schedule.depth == math.ceil(math.log2(n))
    elif n <= rows * lanes:
        assert schedule.depth == -(-n // lanes) - 1 + int(math.log2(lanes))
    schedule.validate()


@pytest.mark.parametrize("n", [1, 2, 5, 64, 100, 256])
def test_strided_schedule_within_lanes_is_the_pairwise_tree(n):
    """Up to one row of lanes the strided schedule is exactly ``schedule.pairwise_tree``, round for round."""
    ours, theirs = strided_schedule(n, 4, 256), pairwise_tree(n)
    assert len(ours.rounds) == len(theirs.rounds) and ours.result == theirs.result
    for a, b in zip(ours.rounds, theirs.rounds):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("rows,lanes", [(1, 2), (3, 4), (2, 8)])
def test_strided_sum_configs(rows, lanes):
    """Other shapes of program (several launches for n = 1000) follow their own schedules bit-exactly."""
    x = randn((1000,), F32, generator("reduce-config", rows, lanes))
    got = np.float32(strided_sum(x, rows, lanes).item())
    assert got.tobytes() == np.float32(strided_schedule(1000, rows, lanes).evaluate(x.cpu().numpy())).tobytes()

