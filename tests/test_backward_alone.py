"""Prepared calls, for benchmarks (docs/backend-contract.md): the autograd backends' prepared backward runs the
forward once, untimed, and each call then computes only the gradients, those ``attention_backward`` returns;
their prepared forward and backward runs one forward a call, not two; ``attnspec bench`` times them where a
backend offers them and says in each record which call it timed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.gate import relative_error
from benchmarks.timing import timing_for
from benchmarks.workloads import bind, make_inputs, timed_call, workloads
from conformance.codec import read_bench
from conformance.records import BenchRecord, TimedCall
from conformance.results import Status
from implementations import flex, torch_sdpa
from implementations.base import InvalidInputError
from implementations.reference import ReferenceBackend
from implementations.torch_sdpa import TorchCPUBackend
from reports.speed import timing_row

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch_cpu() -> TorchCPUBackend:
    return TorchCPUBackend()


@pytest.fixture
def forward_calls(torch_cpu: TorchCPUBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The backend's kernel forward wrapped so that every call of it is counted (the list's one entry)."""
    count = [0]
    kernel = torch_cpu.forward

    def counted(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch_cpu, "forward", counted)
    yield count


def backward_args(B: int = 2, Hq: int = 4, Hk: int = 2, S: int = 24, D: int = 16, causal: bool = True,
                  bias: bool = False) -> tuple[tuple[torch.Tensor, ...], dict[str, object]]:
    """Seeded float32 arguments of ``attention_backward`` (``out`` and ``lse`` from the reference forward)."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, h, S, D, generator=g) for h in (Hq, Hk, Hk))
    options: dict[str, object] = {"causal": True if causal else None}
    if bias:
        options["bias"] = torch.randn(1, Hq, S, S, generator=g)
    out, lse = ReferenceBackend().attention(q, k, v, **options)
    return (q, k, v, out, lse, torch.randn(out.shape, generator=g)), options


def test_prepared_call_runs_the_forward_once_and_never_while_timed(torch_cpu: TorchCPUBackend,
                                                                   forward_calls: list[int]) -> None:
    """Preparing runs the kernel's forward once; the calls, timed by the bench's own timing, run it never. The
    contract call runs it every time (which is why it is not what the bench times)."""
    args, options = backward_args()
    call = torch_cpu.prepare_attention_backward(*args, **options)
    assert forward_calls[0] == 1
    timing = timing_for(call, "cpu", quick=True)
    assert timing.reps >= 3 and forward_calls[0] == 1
    torch_cpu.attention_backward(*args, **options)
    torch_cpu.attention_backward(*args, **options)
    assert forward_calls[0] == 3


def test_the_bench_binds_the_prepared_call(torch_cpu: TorchCPUBackend, forward_calls: list[int]) -> None:
    """The bound call of the attention_backward benchmark: two forwards while binding (the out and lse its
    backward reads, and the recorded one), none in its calls; the record says which call that is."""
    workload = workloads("attention_backward", "cpu", quick=True)[0]
    call = bind(torch_cpu, workload, make_inputs(workload, "cpu", 3))
    assert forward_calls[0] == 2
    for _ in range(4):
        call()
    assert forward_calls[0] == 2
    assert timed_call(torch_cpu, workload) is TimedCall.PREPARED
    assert timed_call(ReferenceBackend(), workload) is TimedCall.CONTRACT
    assert timed_call(torch_cpu, workloads("attention", "cpu", quick=True)[0]) is None


def test_forward_backward_runs_one_forward_a_call(torch_cpu: TorchCPUBackend, forward_calls: list[int]) -> None:
    """The attention_fwd_bwd benchmark's bound call: one forward while binding (the out and lse it is prepared
    on), then one forward a call, where attention then attention_backward run two."""
    workload = workloads("attention_fwd_bwd", "cpu", quick=True)[0]
    call = bind(torch_cpu, workload, make_inputs(workload, "cpu", 3))
    assert forward_calls[0] == 1 and timed_call(torch_cpu, workload) is TimedCall.PREPARED
    for _ in range(3):
        call()
    assert forward_calls[0] == 4
    args, options = backward_args()
    torch_cpu.attention(*args[:3], **options)
    torch_cpu.attention_backward(*args, **options)
    assert forward_calls[0] == 6


@pytest.mark.parametrize("case", [{}, {"causal": False, "Hk": 4}, {"bias": True}])
def test_prepared_forward_backward_gives_the_contract_calls_values(torch_cpu: TorchCPUBackend,
                                                                   case: dict[str, object]) -> None:
    """out, lse, dq, dk, dv of the prepared forward and backward are those of attention then
    attention_backward, bit for bit, on every call."""
    args, options = backward_args(**case)  # type: ignore[arg-type]
    q, k, v, _, _, dout = args
    out, lse = torch_cpu.attention(q, k, v, **options)
    expected = (out, lse, *torch_cpu.attention_backward(q, k, v, out, lse, dout, **options))
    call = torch_cpu.prepare_attention_forward_backward(*args, **options)
    for _ in range(2):
        got = call()
        assert len(got) == 5 and not any(x.requires_grad for x in got)
        for name, g, e in zip(("out", "lse", "dq", "dk", "dv"), got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype, name
            assert torch.equal(g, e), name


@pytest.mark.parametrize("case", [{}, {"causal": False}, {"Hk": 4}, {"bias": True}, {"S": 33, "D": 8}])
def test_prepared_gradients_are_the_contract_calls(torch_cpu: TorchCPUBackend, case: dict[str, object]) -> None:
    """Every call of the prepared backward gives the gradients attention_backward gives, bit for bit (the CPU
    flash backward is deterministic), GQA sums and bias included."""
    args, options = backward_args(**case)  # type: ignore[arg-type]
    expected = torch_cpu.attention_backward(*args, **options)
    call = torch_cpu.prepare_attention_backward(*args, **options)
    for _ in range(2):
        got = call()
        assert len(got) == 3
        for name, g, e in zip(("dq", "dk", "dv"), got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype, name
            assert torch.equal(g, e), name


def test_prepared_call_checks_its_arguments_as_the_contract_does(torch_cpu: TorchCPUBackend) -> None:
    (q, k, v, out, lse, dout), options = backward_args()
    with pytest.raises(InvalidInputError, match="dout"):
        torch_cpu.prepare_attention_backward(q, k, v, out, lse, dout[..., :-1], **options)
    with pytest.raises(InvalidInputError, match="lse"):
        torch_cpu.prepare_attention_backward(q, k, v, out, lse[:, :, :-1], dout, **options)
    with pytest.raises(InvalidInputError, match="dout"):
        torch_cpu.prepare_attention_forward_backward(q, k, v, out, lse, dout[..., :-1], **options)


def test_flex_records_its_forward_with_the_calls_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """flex's backward and prepared backward differentiate a forward recorded with the call's variants in
    force, compiled with AOTAutograd's donated buffers off (a donating compiled backward refuses the prepared
    call's retain_graph). On the CPU torch refuses flex's backward, so the kernel is a stand-in here that
    notes what it saw, and the backward is declared for the test."""
    from torch._functorch import config

    donating = config.donated_buffer
    backend = flex.FlexBackend("cpu")
    monkeypatch.setattr(backend, "capabilities", dataclasses.replace(backend.capabilities,
                                                                     backward_dtypes=(torch.float32,)))
    seen: list[tuple[float | None, bool]] = []

    def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: object, scale: float, *,
               need_lse: bool) -> tuple[torch.Tensor, None]:
        seen.append((backend.call_variants.softcap, config.donated_buffer))
        return q * scale + (k * v).sum(), None

    monkeypatch.setattr(backend, "forward", kernel)
    (q, k, v, out, lse, dout), _ = backward_args(Hk=4, causal=True)
    call = backend.prepare_attention_backward(q, k, v, out, lse, dout, causal=True, softcap=0.5)
    assert seen == [(0.5, False)]
    dq, dk, dv = call()
    assert torch.allclose(dq, dout * q.shape[-1] ** -0.5) and torch.allclose(dk, dout.sum() * v)
    assert len(seen) == 1
    backend.attention_backward(q, k, v, out, lse, dout, causal=True, softcap=0.25)
    assert seen[-1] == (0.25, False) and config.donated_buffer == donating
    backend.prepare_attention_forward_backward(q, k, v, out, lse, dout, causal=True, softcap=0.125)()
    assert seen[-1] == (0.125, False) and len(seen) == 3


def test_bench_cli_records_which_call_it_timed(tmp_path: Path) -> None:
    """Through the real CLI: torch is timed on its prepared calls, the reference (the CPU baseline, which has
    none) on the contract calls, for attention_backward and attention_fwd_bwd; every gate passes; the
    report's table says which call each row timed."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "reports.command", "bench", "--quick", "--op", "attention_backward",
                           "--op", "attention_fwd_bwd", "--backend", "torch", "--device", "cpu", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = read_bench(out, problems := [])
    assert problems == [] and run.finished
    grouped: dict[tuple[str, str], list[BenchRecord]] = {}
    for r in run.records:
        grouped.setdefault((r.op, r.backend), []).append(r)
    ops = ("attention_backward", "attention_fwd_bwd")
    assert set(grouped) == {(op, backend) for op in ops for backend in ("torch", "reference")}
    for (op, backend), records in grouped.items():
        timed = TimedCall.PREPARED if backend == "torch" else TimedCall.CONTRACT
        assert len(records) == len(workloads(op, "cpu", quick=True))
        assert all(r.gate is Status.PASSED and r.median_s and r.timed is timed for r in records), records
    raw = json.loads(out.read_text())["records"]
    assert {(r["op"], r["backend"], r["timed"]) for r in raw} == {
        (op, "torch", "prepared") for op in ops} | {(op, "reference", "contract") for op in ops}
    assert "prepared call" in timing_row(grouped["attention_backward", "torch"][0]).timed
    assert "contract calls" in timing_row(grouped["attention_fwd_bwd", "reference"][0]).timed


def test_timed_reads_back_and_older_files_have_none(tmp_path: Path) -> None:
    """A bench file without ``timed`` (older files, other operations) reads as None; a value that is no call of
    the format is left out with a problem noted; the report shows nothing for None."""
    path = tmp_path / "bench.json"
    records = [{"op": "attention_backward", "backend": "a", "device": "cpu", "timed": "prepared"},
               {"op": "attention_backward", "backend": "b", "device": "cpu"},
               {"op": "attention_backward", "backend": "c", "device": "cpu", "timed": "forward"}]
    path.write_text(json.dumps({"kind": "bench", "schema": 2, "records": records}))
    run = read_bench(path, problems := [])
    assert [r.timed for r in run.records] == [TimedCall.PREPARED, None, None]
    assert len(problems) == 1 and problems[0] == 'records[2]: timed "forward" is not a call of the format; left out'
    assert timing_row(run.records[1]).timed == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["torch-flash", "torch-efficient", "torch-cudnn", "torch-math", "flex"])
def test_cuda_prepared_calls_give_the_contract_values(name: str) -> None:
    """Each SDPA kernel and compiled flex on CUDA: the prepared backward, called three times on one recorded
    graph (compiled flex's retain_graph included), and the prepared forward and backward give the contract
    calls' values, within bfloat16 rounding (fused backwards may accumulate in any order)."""
    backend = flex.FlexBackend("cuda") if name == "flex" else next(
        b for b in torch_sdpa.backends() if b.name == name)
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k, v, dout = (torch.randn(2, 4, 256, 64, generator=g, device="cuda").to(torch.bfloat16) for _ in range(4))
    out, lse = backend.attention(q, k, v, causal=True)
    expected = (out, lse, *backend.attention_backward(q, k, v, out, lse, dout, causal=True))
    backward = backend.prepare_attention_backward(q, k, v, out, lse, dout, causal=True)
    for _ in range(3):
        assert all(relative_error(x, e) < 1e-2 for x, e in zip(backward(), expected[2:], strict=True))
    both = backend.prepare_attention_forward_backward(q, k, v, out, lse, dout, causal=True)()
    assert all(relative_error(x, e) < 1e-2 for x, e in zip(both, expected, strict=True))
