"""GPU benchmark of the Triton kernels against PyTorch: ``python -m benchmarks.kernel_tools.bench_triton``.

Prints a table and writes every figure to ``--out`` (JSON) section by section, so an interrupted run keeps
what it measured. Times are medians of ``triton.testing.do_bench`` (which flushes the L2 between runs) on
fresh random inputs per case. Counts (SPEC.md): attention forward ``4*B*H*S*S*D`` FLOPs, halved when
causal; backward 2.5x the forward; KD loss floor = read s and t once + write ds once at the measured copy
bandwidth; reduction and softmax statistics read their input once.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from implementations.triton.attention_bwd import BackwardConfig, attention_backward, backward_config
from implementations.triton.attention_fwd import attention_forward, forward_config
from implementations.triton.common import LaunchConfig
from implementations.triton.kd_loss import kd_loss
from implementations.triton.reduce import strided_sum
from implementations.triton.softmax_stats import softmax_stats

GiB = 1 << 30
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: problem sizes: FULL for the GPU run, SMALL (--small) for a smoke run on the CPU interpreter
FULL = {"tokens": 16384, "seqs": (1024, 4096, 16384), "sweep_seq": 4096, "kd": (8192, 131072), "reduce": 1 << 28,
        "stats": (8192, 131072), "copy": GiB // 2}
SMALL = {"tokens": 256, "seqs": (128, 256), "sweep_seq": 128, "kd": (8, 3001), "reduce": 70001,
         "stats": (8, 5000), "copy": 1 << 20}
SIZES = dict(FULL)
FWD_SWEEP = [LaunchConfig(128, 128, 8, 2), LaunchConfig(128, 64, 8, 3), LaunchConfig(128, 64, 4, 3),
             LaunchConfig(64, 64, 4, 4)]
DKDV_SWEEP = [LaunchConfig(32, 128, 8, 2), LaunchConfig(64, 128, 8, 2), LaunchConfig(64, 64, 4, 3)]
DQ_SWEEP = [LaunchConfig(128, 64, 8, 2), LaunchConfig(64, 64, 4, 3)]
#: reduction configs (rows, lanes, warps) of ``strided_sum``
REDUCE_SWEEP = [(64, 1024, 4), (32, 1024, 4), (128, 1024, 4), (64, 2048, 8), (16, 4096, 8)]
STATS_SWEEP = [(4096, 8), (8192, 8)]
#: (chunk, block, warps) of the KD kernel; a chunk of the whole row (131072) is the two-pass form
KD_SWEEP = [(8192, 2048, 4), (4096, 1024, 4), (16384, 2048, 4), (8192, 1024, 4), (2048, 1024, 4),
            (16384, 4096, 8), (131072, 4096, 8)]


def median_ms(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` in milliseconds (``do_bench`` on CUDA; 3 host-timed runs on the CPU)."""
    if DEVICE == "cuda":
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class Recorder:
    """Results by section, written to ``path`` after each one; the first section, ``provenance``, names the
    device, versions and commit of the run (``conformance.provenance.collect``)."""

    def __init__(self, path: Path) -> None:
        from conformance.codec import to_json
        from conformance.provenance import collect

        self.path = path
        self.data: dict[str, object] = {"provenance": to_json(collect())}

    def put(self, section: str, value: object) -> None:
        self.data[section] = value
        self.path.write_text(json.dumps(self.data, indent=1))


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 2 GiB, counting bytes read plus bytes written."""
    src = torch.randn(SIZES["copy"], device=DEVICE)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def attention_inputs(S: int, dtype: torch.dtype = torch.bfloat16, D: int = 128,
                     H: int = 16) -> tuple[torch.Tensor, ...]:
    B = max(1, SIZES["tokens"] // S)
    q, k, v = (torch.randn(B, H, S, D, device=DEVICE, dtype=dtype) for _ in range(3))
    return q, k, v


def attention_flops(q: torch.Tensor, causal: bool) -> float:
    B, H, S, D = q.shape
    return 4 * B * H * S * S * D / (2 if causal else 1)


def forward_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, cfg: LaunchConfig) -> float:
    variant = "top_left" if causal else None
    return median_ms(lambda: attention_forward(q, k, v, variant, 1 / math.sqrt(q.shape[-1]), cfg))


def backward_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, cfg: BackwardConfig) -> float:
    variant = "top_left" if causal else None
    scale = 1 / math.sqrt(q.shape[-1])
    out, lse = attention_forward(q, k, v, variant, scale, forward_config(q.shape[-1], q.dtype, q.device))
    dout = torch.randn_like(out)
    return median_ms(lambda: attention_backward(q, k, v, out, lse, dout, variant, scale, cfg))


def timed_or_error(fn: Callable[[], float]) -> dict[str, object]:
    """``{"ms": t}``, or ``{"error": ...}`` for a config the chip cannot run (shared memory, registers)."""
    try:
        return {"ms": fn()}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def sweep_forward(rec: Recorder) -> dict[bool, LaunchConfig]:
    """Time each forward config at S=4096 (16k tokens, H=16, D=128, bf16); the fastest per causal flag."""
    seq = SIZES["sweep_seq"]
    best: dict[bool, LaunchConfig] = {}
    rows = []
    for causal in (False, True):
        q, k, v = attention_inputs(seq)
        times = {}
        for cfg in FWD_SWEEP:
            row = timed_or_error(partial(forward_ms, q, k, v, causal, cfg))
            if "ms" in row:
                times[cfg] = row["ms"]
                row["tflops"] = attention_flops(q, causal) / row["ms"] / 1e9
            rows.append({"causal": causal, "config": vars(cfg), **row})
        best[causal] = min(times, key=times.get)
    rec.put(f"forward_sweep_S{seq}", rows)
    return best


def sweep_backward(rec: Recorder) -> dict[bool, BackwardConfig]:
    """dK/dV configs with the default dQ config, then dQ configs with the best dK/dV one (S=4096)."""
    seq = SIZES["sweep_seq"]
    best: dict[bool, BackwardConfig] = {}
    rows = []
    for causal in (False, True):
        q, k, v = attention_inputs(seq)
        default = backward_config(q.shape[-1], q.dtype, q.device)
        times: dict[BackwardConfig, float] = {}
        candidates = [BackwardConfig(c, default.dq) for c in DKDV_SWEEP]
        for stage in ("dkdv", "dq"):
            if stage == "dq":
                dkdv = min(times, key=times.get).dkdv
                candidates = [BackwardConfig(dkdv, c) for c in DQ_SWEEP if BackwardConfig(dkdv, c) not in times]
            for cfg in candidates:
                row = timed_or_error(partial(backward_ms, q, k, v, causal, cfg))
                if "ms" in row:
                    times[cfg] = row["ms"]
                    row["tflops"] = 2.5 * attention_flops(q, causal) / row["ms"] / 1e9
                rows.append({"causal": causal, "dkdv": vars(cfg.dkdv), "dq": vars(cfg.dq), **row})
        best[causal] = min(times, key=times.get)
    rec.put(f"backward_sweep_S{seq}", rows)
    return best


def attention_case(S: int, causal: bool, fwd: LaunchConfig, bwd: BackwardConfig) -> dict[str, object]:
    """One shape: Triton forward/backward vs SDPA flash, times, TFLOP/s and max |difference|."""
    variant = "top_left" if causal else None
    scale = 1 / math.sqrt(128)
    q, k, v = attention_inputs(S)
    flops = attention_flops(q, causal)
    out, lse = attention_forward(q, k, v, variant, scale, fwd)
    t_fwd = median_ms(lambda: attention_forward(q, k, v, variant, scale, fwd))
    t_sdpa = median_ms(lambda: sdpa_flash(q, k, v, causal))
    dout = torch.randn_like(out)
    t_bwd = median_ms(lambda: attention_backward(q, k, v, out, lse, dout, variant, scale, bwd))
    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref = sdpa_flash(qg, kg, vg, causal)
    t_sdpa_bwd = median_ms(lambda: torch.autograd.grad(ref, (qg, kg, vg), dout, retain_graph=True))
    grads = attention_backward(q, k, v, out, lse, dout, variant, scale, bwd)
    ref_grads = torch.autograd.grad(ref, (qg, kg, vg), dout)
    diffs = {"out": float((out - ref.detach()).abs().max())}
    diffs.update({n: float((g - r).abs().max()) for n, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    return {
        "S": S, "B": q.shape[0], "H": q.shape[1], "D": q.shape[-1], "causal": causal,
        "fwd_ms": t_fwd, "fwd_tflops": flops / t_fwd / 1e9,
        "sdpa_flash_fwd_ms": t_sdpa, "sdpa_flash_fwd_tflops": flops / t_sdpa / 1e9,
        "bwd_ms": t_bwd, "bwd_tflops": 2.5 * flops / t_bwd / 1e9,
        "sdpa_flash_bwd_ms": t_sdpa_bwd, "sdpa_flash_bwd_tflops": 2.5 * flops / t_sdpa_bwd / 1e9,
        "max_abs_diff_vs_sdpa": diffs,
    }


def bench_attention(rec: Recorder, fwd_best: dict[bool, LaunchConfig], bwd_best: dict[bool, BackwardConfig]
                    ) -> list[dict[str, object]]:
    """bf16 D=128 H=16, B*S = 16384 tokens: Triton forward/backward vs SDPA flash, TFLOP/s."""
    rows = []
    for S in SIZES["seqs"]:
        for causal in (False, True):
            rows.append(attention_case(S, causal, fwd_best[causal], bwd_best[causal]))
            rec.put("attention_bf16_D128", rows)
    return rows


def kd_reference(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temperature: float,
                 alpha: float) -> torch.Tensor:
    """KD-1 written with PyTorch ops (what torch.compile gets)."""
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean") * temperature**2
    return alpha * kl + (1 - alpha) * F.cross_entropy(s, labels)


def peak_extra(fn: Callable[[], object]) -> int:
    """Peak bytes allocated during ``fn`` beyond what was allocated before it (-1 without CUDA)."""
    if DEVICE != "cuda":
        fn()
        return -1
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_kd(rec: Recorder, copy_gbs: float) -> dict[str, object]:
    """N=8192, V=131072 float32, T=2, alpha=0.5 with labels: fused fwd+bwd vs torch.compile fwd+bwd."""
    (N, V), T, alpha = SIZES["kd"], 2.0, 0.5
    s = torch.randn(N, V, device=DEVICE) * 3
    t = torch.randn(N, V, device=DEVICE) * 3
    labels = torch.randint(0, V, (N,), device=DEVICE)
    result: dict[str, object] = {"N": N, "V": V, "temperature": T, "alpha": alpha}

    def fused(chunk: int, block: int, warps: int, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        args = {"alpha": alpha, "labels": labels, **kw}
        return kd_loss(s, t, temperature=T, ignore_index=-100, ds_shape=s.shape, chunk=chunk, block=block,
                       num_warps=warps, **args)

    def name(cfg: tuple[int, int, int]) -> str:
        return f"chunk{cfg[0]}_block{cfg[1]}_w{cfg[2]}"

    sweep = {name(cfg): median_ms(lambda c=cfg: fused(*c)) for cfg in KD_SWEEP}
    result["fused_sweep_ms"] = sweep
    best = min(KD_SWEEP, key=lambda c: sweep[name(c)])
    result["fused_best"] = {"chunk": best[0], "block": best[1], "num_warps": best[2]}
    result["fused_ms"] = sweep[name(best)]
    result["fused_extra_bytes_beyond_ds"] = peak_extra(lambda: fused(*best)) - s.numel() * 4
    result["fused_kd_only_ms"] = median_ms(lambda: fused(*best, alpha=1.0, labels=None))
    floor_bytes = 3 * N * V * 4
    result["floor_ms"] = floor_bytes / copy_gbs / 1e6
    result["fused_over_floor"] = result["fused_ms"] / result["floor_ms"]
    rec.put("kd_loss", result)

    compiled = torch.compile(kd_reference)
    sg = s.clone().requires_grad_()

    def reference_step() -> None:
        sg.grad = None
        compiled(sg, t, labels, T, alpha).backward()

    t0 = time.time()
    reference_step()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    result["compile_seconds"] = time.time() - t0
    result["compiled_ms"] = median_ms(reference_step)
    sg.grad = None
    result["compiled_extra_bytes_beyond_grad"] = peak_extra(reference_step) - s.numel() * 4
    result["speedup_vs_compiled"] = result["compiled_ms"] / result["fused_ms"]
    loss, ds = fused(*best)
    sg.grad = None
    ref_loss = compiled(sg, t, labels, T, alpha)
    ref_loss.backward()
    result["abs_diff_loss"] = float((loss - ref_loss.detach()).abs())
    result["max_abs_diff_ds"] = float((ds - sg.grad).abs().max())
    rec.put("kd_loss", result)
    return result


def bench_reduce(rec: Recorder) -> dict[str, object]:
    """2^28 float32: strided-lanes sum vs torch.sum, GB/s of input read."""
    x = torch.randn(SIZES["reduce"], device=DEVICE)
    nbytes = x.numel() * 4
    result: dict[str, object] = {"n": x.numel()}
    sweep = {}
    for rows, lanes, warps in REDUCE_SWEEP:
        ms = median_ms(lambda c=(rows, lanes, warps): strided_sum(x, *c))
        sweep[f"rows{rows}_lanes{lanes}_w{warps}"] = {"ms": ms, "gbs": nbytes / ms / 1e6}
    result["sweep"] = sweep
    best = max(sweep, key=lambda key: sweep[key]["gbs"])
    result["best"] = best
    result["gbs"] = sweep[best]["gbs"]
    ms = median_ms(lambda: torch.sum(x))
    result["torch_sum_gbs"] = nbytes / ms / 1e6
    result["ratio_vs_torch_sum"] = result["gbs"] / result["torch_sum_gbs"]
    exact = float(x.double().sum())
    result["rel_err_vs_float64"] = abs(float(strided_sum(x)) - exact) / abs(exact)
    result["torch_sum_rel_err_vs_float64"] = abs(float(torch.sum(x)) - exact) / abs(exact)
    rec.put("reduce_sum", result)
    return result


def bench_stats(rec: Recorder, copy_gbs: float) -> dict[str, object]:
    """[8192, 131072] float32 softmax statistics: GB/s of input read vs the copy bandwidth."""
    x = torch.randn(*SIZES["stats"], device=DEVICE) * 4
    nbytes = x.numel() * 4
    result: dict[str, object] = {"shape": list(x.shape), "copy_gbs": copy_gbs}
    sweep = {}
    for block, warps in STATS_SWEEP:
        ms = median_ms(lambda b=block, w=warps: softmax_stats(x, b, w))
        sweep[f"block{block}_w{warps}"] = {"ms": ms, "gbs": nbytes / ms / 1e6}
    result["sweep"] = sweep
    best = max(sweep, key=lambda key: sweep[key]["gbs"])
    result["best"] = best
    result["gbs"] = sweep[best]["gbs"]
    result["fraction_of_copy"] = result["gbs"] / copy_gbs
    ms = median_ms(lambda: torch.logsumexp(x, -1))
    result["torch_logsumexp_gbs"] = nbytes / ms / 1e6
    m, l = softmax_stats(x)
    xm = x.max(-1).values
    result["m_exact"] = bool(torch.equal(m, xm))
    ref_l = torch.exp(x.double() - xm.double()[:, None]).sum(-1)
    result["l_max_rel_err"] = float(((l.double() - ref_l) / ref_l).abs().max())
    rec.put("softmax_stats", result)
    return result


def tool_arguments(description: str | None, out: str, sections: str,
                   more: Callable[[argparse.ArgumentParser], object] | None = None) -> argparse.Namespace:
    """The command line of a Triton kernel tool: ``--out`` (its JSON file, default ``out``), ``--sections``
    (comma-separated, default ``sections``) and ``--small``; ``more`` adds the tool's own arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--sections", default=sections)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke run (CPU: TRITON_INTERPRET=1)")
    if more is not None:
        more(parser)
    return parser.parse_args()


def main() -> None:
    args = tool_arguments(__doc__, "triton_bench.json", "attention,kd,stats,reduce")
    if args.small:
        SIZES.update(SMALL)
    sections = set(args.sections.split(","))
    rec = Recorder(args.out)
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (Triton interpreter)"
    rec.put("machine", {"device": name, "torch": torch.__version__, "triton": triton.__version__,
                        "cuda": torch.version.cuda, "sizes": SIZES})
    copy_gbs = copy_bandwidth()
    rec.put("copy_bandwidth_gbs", copy_gbs)
    lines = [f"{name}, torch {torch.__version__}, triton {triton.__version__}; copy {copy_gbs:.0f} GB/s"]
    if "attention" in sections:
        fwd_best = sweep_forward(rec)
        bwd_best = sweep_backward(rec)
        rec.put("chosen_configs", {"forward": {str(c): vars(v) for c, v in fwd_best.items()},
                                   "backward": {str(c): {"dkdv": vars(v.dkdv), "dq": vars(v.dq)}
                                                for c, v in bwd_best.items()}})
        for r in bench_attention(rec, fwd_best, bwd_best):
            lines.append(f"attn S={r['S']:5d} causal={r['causal']!s:5}: fwd {r['fwd_tflops']:6.1f} TFLOP/s "
                         f"(flash {r['sdpa_flash_fwd_tflops']:6.1f})  bwd {r['bwd_tflops']:6.1f} "
                         f"(flash {r['sdpa_flash_bwd_tflops']:6.1f})")
    if "kd" in sections:
        r = bench_kd(rec, copy_gbs)
        lines.append(f"kd: fused {r['fused_ms']:.2f} ms, compiled {r['compiled_ms']:.2f} ms "
                     f"(x{r['speedup_vs_compiled']:.2f}), floor {r['floor_ms']:.2f} ms "
                     f"(x{r['fused_over_floor']:.2f}), extra {r['fused_extra_bytes_beyond_ds'] / 1e6:.1f} MB "
                     f"vs {r['compiled_extra_bytes_beyond_grad'] / 1e6:.1f} MB")
    if "stats" in sections:
        r = bench_stats(rec, copy_gbs)
        lines.append(f"stats 8192x131072: {r['gbs']:.0f} GB/s = {r['fraction_of_copy']:.2f} of copy [{r['best']}]")
    if "reduce" in sections:
        r = bench_reduce(rec)
        lines.append(f"reduce 2^28: {r['gbs']:.0f} GB/s vs torch.sum {r['torch_sum_gbs']:.0f} "
                     f"(x{r['ratio_vs_torch_sum']:.2f}) [{r['best']}]")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
