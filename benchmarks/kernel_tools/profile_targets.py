"""The kernels ``profile_kernels`` profiles: named targets, each a list of cases (one shape each) whose kernels
run once inside a profiler range, at the backend's default launch config.

A case builds its inputs and returns the call; :func:`run_target` runs each case's call once outside any range
(compilation, NVRTC and first-call work stay unprofiled), then opens a range (``cudaProfilerStart``, which ncu
``--profile-from-start off`` waits for), launches :func:`case_marker` and runs the call again. The marker is a
one-program Triton kernel: in ncu's list of launches the k-th marker opens the k-th case.

Shapes (bf16 attention, H * D = 2048, 16k tokens per batch; KD as ``attnspec bench`` times it, alpha = 1,
T = 2): ``*-fwd`` D in {64, 128} x S in {4096, 16384} x causal and not; ``*-bwd`` D = 128 x the same S and
causal flags (the forward's ``out`` and ``lse`` made outside the range); ``*-kd`` N = 8192, V = 131072, float32
and bf16, forward and gradient in one call. Triton is called through its kernel functions
(``attention_forward``, ``attention_backward``, ``kd_loss``), CuPy through its backend's methods, as
``bench_triton`` and ``bench_cupy`` call them.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import triton
import triton.language as tl

from benchmarks.kernel_tools.bench_triton import DEVICE
from implementations.ops.kd_loss import TEMPERATURE

BF16 = torch.bfloat16
#: sizes of the GPU run; SMALL (``--small``) runs the Triton targets on the CPU interpreter
FULL = {"width": 2048, "tokens": 16384, "seqs": (4096, 16384), "fwd_dims": (64, 128), "bwd_dims": (128,),
        "kd": (8192, 131072)}
SMALL = {"width": 128, "tokens": 256, "seqs": (64, 128), "fwd_dims": (64, 128), "bwd_dims": (128,),
         "kd": (4, 4160)}
MARKER_NAME = "case_marker"


@triton.jit
def case_marker(X):
    """Writes its program id: a launch that only marks where a case's kernels start."""
    tl.store(X + tl.program_id(0), tl.program_id(0))


@dataclass(frozen=True)
class Case:
    """One shape of a target: ``build()`` makes the inputs on the device and returns the call to profile."""

    label: str
    build: Callable[[], Callable[[], object]]


@dataclass(frozen=True)
class AttentionShape:
    """``[B, H, S, D]`` bf16 inputs with ``B * S`` tokens and ``H * D`` the model width."""

    S: int
    D: int
    causal: bool
    tokens: int
    width: int

    @property
    def label(self) -> str:
        return f"S{self.S}-D{self.D}-{'causal' if self.causal else 'full'}"

    @property
    def variant(self) -> str | None:
        return "top_left" if self.causal else None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, H, S, D)``."""
        return max(1, self.tokens // self.S), self.width // self.D, self.S, self.D

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (torch.randn(self.shape, device=DEVICE, dtype=BF16) for _ in range(3))
        return q, k, v


@dataclass(frozen=True)
class KDShape:
    """``[N, V]`` student and teacher logits of one dtype."""

    N: int
    V: int
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"N{self.N}-V{self.V}-{'fp32' if self.dtype == torch.float32 else 'bf16'}"

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = (torch.randn(self.N, self.V, device=DEVICE, dtype=self.dtype) * 2 for _ in range(2))
        return s, t


def attention_shapes(sizes: dict, dims: str) -> list[AttentionShape]:
    return [AttentionShape(S, D, causal, sizes["tokens"], sizes["width"])
            for D in sizes[dims] for S in sizes["seqs"] for causal in (False, True)]


def kd_shapes(sizes: dict) -> list[KDShape]:
    return [KDShape(*sizes["kd"], dtype) for dtype in (torch.float32, BF16)]


def _cupy_backend():  # noqa: ANN202 - CupyBackend needs CuPy to import
    from implementations.cupy import backends

    return backends()


def triton_fwd(shape: AttentionShape) -> Callable[[], object]:
    from implementations.triton.attention_fwd import attention_forward, forward_config

    q, k, v = shape.inputs()
    config = forward_config(shape.D, BF16, q.device)
    return partial(attention_forward, q, k, v, shape.variant, shape.D ** -0.5, config)


def triton_bwd(shape: AttentionShape) -> Callable[[], object]:
    from implementations.triton.attention_bwd import attention_backward, backward_config
    from implementations.triton.attention_fwd import attention_forward, forward_config

    q, k, v = shape.inputs()
    scale = shape.D ** -0.5
    out, lse = attention_forward(q, k, v, shape.variant, scale, forward_config(shape.D, BF16, q.device))
    dout = torch.randn_like(out)
    config = backward_config(shape.D, BF16, q.device)
    return partial(attention_backward, q, k, v, out, lse, dout, shape.variant, scale, config)


def triton_kd(shape: KDShape) -> Callable[[], object]:
    from implementations.triton.kd_loss import kd_loss

    s, t = shape.inputs()
    return partial(kd_loss, s, t, temperature=TEMPERATURE, alpha=1.0, labels=None, ignore_index=-100,
                   ds_shape=s.shape)


def cupy_fwd(shape: AttentionShape) -> Callable[[], object]:
    backend = _cupy_backend()
    q, k, v = shape.inputs()
    return partial(backend.attention, q, k, v, causal=shape.variant)


def cupy_bwd(shape: AttentionShape) -> Callable[[], object]:
    backend = _cupy_backend()
    q, k, v = shape.inputs()
    out, lse = backend.attention(q, k, v, causal=shape.variant)
    dout = torch.randn_like(out)
    return partial(backend.attention_backward, q, k, v, out, lse, dout, causal=shape.variant)


def cupy_kd(shape: KDShape) -> Callable[[], object]:
    backend = _cupy_backend()
    s, t = shape.inputs()
    return partial(backend.kd_loss, s, t, temperature=TEMPERATURE)


def _attention_cases(call: Callable[[AttentionShape], Callable[[], object]], dims: str
                     ) -> Callable[[dict], list[Case]]:
    return lambda sizes: [Case(shape.label, partial(call, shape)) for shape in attention_shapes(sizes, dims)]


def _kd_cases(call: Callable[[KDShape], Callable[[], object]]) -> Callable[[dict], list[Case]]:
    return lambda sizes: [Case(shape.label, partial(call, shape)) for shape in kd_shapes(sizes)]


#: target name -> its cases at the given sizes
TARGETS: dict[str, Callable[[dict], list[Case]]] = {
    "triton-fwd": _attention_cases(triton_fwd, "fwd_dims"), "cupy-fwd": _attention_cases(cupy_fwd, "fwd_dims"),
    "triton-bwd": _attention_cases(triton_bwd, "bwd_dims"), "cupy-bwd": _attention_cases(cupy_bwd, "bwd_dims"),
    "triton-kd": _kd_cases(triton_kd), "cupy-kd": _kd_cases(cupy_kd),
}


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@contextmanager
def profiled_range() -> Iterator[None]:
    """``cudaProfilerStart`` ... ``cudaProfilerStop`` around the block (nothing without CUDA)."""
    if DEVICE == "cuda":
        torch.cuda.profiler.start()
    try:
        yield
    finally:
        synchronize()
        if DEVICE == "cuda":
            torch.cuda.profiler.stop()


def _failed(label: str) -> None:
    print(f"{label}: failed", file=sys.stderr, flush=True)
    traceback.print_exc()


def _warmed(label: str, case: Case) -> Callable[[], object] | None:
    """The case's call, built and run once; None (its traceback on stderr) if either failed."""
    try:
        call = case.build()
        call()
        synchronize()
    except Exception:  # one case's failure must not end the target
        _failed(label)
        return None
    return call


def _profiled(label: str, call: Callable[[], object]) -> bool:
    try:
        call()
    except Exception:
        _failed(label)
        return False
    return True


def run_target(name: str, sizes: dict) -> list[str]:
    """Each case of the target: built, run once unprofiled, then marker + run inside a profiler range. A case
    that fails still launches its marker (so the launches after it keep their cases); returns the failed
    cases' labels."""
    mark = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    case_marker[(1,)](mark)
    failed = []
    for case in TARGETS[name](sizes):
        label = f"{name} {case.label}"
        call = _warmed(label, case)
        with profiled_range():
            case_marker[(1,)](mark)
            ran = call is not None and _profiled(label, call)
        print(f"{label}: {'profiled' if ran else 'no launches profiled'}", file=sys.stderr, flush=True)
        if not ran:
            failed.append(case.label)
        del call
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return failed
