"""Benchmarks of the cupy backend against torch on one GPU; prints a table and writes JSON.

Usage, from the repository root on a GPU machine:
    PYTHONPATH=. python3 implementations/cupy/bench_cupy.py --out DIR [--sections fwd,bwd,sweep,kd,reduce,stats]

Every timing is the median of ``triton.testing.do_bench`` (CUDA events) on fresh random inputs, after warm-up
(compilation and autotuning stay outside the timed region). Rates:
- attention forward FLOPs ``4 B H S^2 D`` (halved when causal), backward 2.5 x forward (SPEC), against
  ``F.scaled_dot_product_attention`` restricted to the flash backend;
- KD loss: forward + gradient, against ``torch.compile`` of the unfused formula
  ``kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, "batchmean") T^2`` and its autograd backward;
  ``kd_part`` at each (columns per part, threads) of ``KD_CONFIGS`` (the default also with the cross-entropy
  term, alpha = 0.5 with labels); bandwidth counts the fewest bytes (read s and t, write ds);
- reduction of 2^28 float32 against ``torch.sum`` (bytes read / time);
- softmax statistics of a [8192, 131072] float32 matrix against the device-to-device copy bandwidth
  (bytes read + written by ``Tensor.copy_`` / time).
A section that fails records its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from implementations.cupy import backends
from implementations.cupy.backend import KD_PART, KD_THREADS, FwdConfig, attention_forward, kd_split, reduce_value

BE = backends()
DEV = "cuda"


def median_ms(fn: Callable[[], object]) -> float:
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _attn_inputs(S: int, H: int = 16, D: int = 128, tokens: int = 16384) -> tuple[torch.Tensor, ...]:
    B = tokens // S
    return tuple(torch.randn(B, H, S, D, device=DEV, dtype=torch.bfloat16) for _ in range(4))


def _attn_flops(q: torch.Tensor, causal: bool) -> float:
    B, H, S, D = q.shape
    return 4 * B * H * S * S * D / (2 if causal else 1)


def bench_fwd(rows: list[dict]) -> None:
    for S in (1024, 4096, 16384):
        q, k, v, _ = _attn_inputs(S)
        for causal in (False, True):
            variant = "top_left" if causal else None
            ours = median_ms(partial(BE.attention, q, k, v, causal=variant))
            ref = median_ms(partial(_sdpa_flash, q, k, v, causal))
            out, _ = BE.attention(q, k, v, causal=variant)
            diff = float((out.float() - _sdpa_flash(q, k, v, causal).float()).abs().max())
            flops = _attn_flops(q, causal)
            rows.append({"op": "attention_fwd", "S": S, "B": q.shape[0], "H": 16, "D": 128, "causal": causal,
                         "ms": ours, "tflops": flops / ours / 1e9, "sdpa_flash_ms": ref,
                         "sdpa_flash_tflops": flops / ref / 1e9, "ratio": ref / ours, "max_abs_diff_vs_sdpa": diff})


def bench_sweep(rows: list[dict]) -> None:
    """Forward tilings at D = 128 (the backend's default is FwdConfig(2, 64))."""
    q, k, v, _ = _attn_inputs(4096)
    scale = 1 / math.sqrt(128)
    for causal in (False, True):
        variant = "top_left" if causal else None
        for cfg in (FwdConfig(2, 64), FwdConfig(2, 32), FwdConfig(1, 64), FwdConfig(1, 128)):
            ms = median_ms(partial(attention_forward, q, k, v, variant, scale, cfg))
            rows.append({"op": "attention_fwd_tiling", "S": 4096, "causal": causal, "mt": cfg.mt, "bc": cfg.bc,
                         "block_m": cfg.block_m, "ms": ms, "tflops": _attn_flops(q, causal) / ms / 1e9})


def bench_bwd(rows: list[dict]) -> None:
    for S in (1024, 4096, 16384):
        q, k, v, dout = _attn_inputs(S)
        for causal in (False, True):
            variant = "top_left" if causal else None
            out, lse = BE.attention(q, k, v, causal=variant)
            ours = median_ms(partial(BE.attention_backward, q, k, v, out, lse, dout, causal=variant))
            qr, kr, vr = (x.detach().requires_grad_() for x in (q, k, v))
            o = _sdpa_flash(qr, kr, vr, causal)
            ref = median_ms(partial(torch.autograd.grad, o, (qr, kr, vr), dout, retain_graph=True))
            ours_g = BE.attention_backward(q, k, v, out, lse, dout, causal=variant)
            ref_g = torch.autograd.grad(o, (qr, kr, vr), dout)
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours_g, ref_g))
            flops = 2.5 * _attn_flops(q, causal)
            rows.append({"op": "attention_bwd", "S": S, "B": q.shape[0], "H": 16, "D": 128, "causal": causal,
                         "ms": ours, "tflops": flops / ours / 1e9, "sdpa_flash_ms": ref,
                         "sdpa_flash_tflops": flops / ref / 1e9, "ratio": ref / ours, "max_abs_diff_vs_sdpa": diff})


#: (columns per part, threads per CTA) of ``kd_part`` swept by the KD section; the first is the default
KD_CONFIGS = ((KD_PART, KD_THREADS), (8192, 128), (4096, 128), (16384, 256))


def bench_kd(rows: list[dict]) -> None:
    N, V, T = 8192, 131072, 2.0
    s = torch.randn(N, V, device=DEV) * 2
    t = torch.randn(N, V, device=DEV) * 2
    labels = torch.randint(0, V, (N,), device=DEV)
    labels[::7] = -100
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def reference(s_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(s_ / T, -1), F.log_softmax(t_ / T, -1), log_target=True,
                        reduction="batchmean") * (T * T)

    compiled = torch.compile(reference)
    sr = s.detach().requires_grad_()

    def run_compiled() -> torch.Tensor:
        return torch.autograd.grad(compiled(sr, t), sr)[0]

    ref_ds = run_compiled()
    ref_loss = float(reference(s, t))
    ref = median_ms(run_compiled)
    nbytes = 3 * N * V * 4
    for part, threads in KD_CONFIGS:
        be = type(BE)()
        be.kd_part_cols, be.kd_threads = part, threads
        loss, ds = be.kd_loss(s, t, temperature=T)
        diff = float((ds - ref_ds).abs().max())
        loss_diff = abs(float(loss) - ref_loss)
        del ds
        ours = median_ms(partial(be.kd_loss, s, t, temperature=T))
        row = {"op": "kd_loss_fwd_bwd", "N": N, "V": V, "dtype": "float32", "T": T, "part": part,
               "threads": threads, "parts": kd_split(V, N, sms, part)[0], "ms": ours,
               "gbps_min_bytes": nbytes / ours / 1e6, "torch_compile_ms": ref, "speedup": ref / ours,
               "max_abs_diff_ds": diff, "loss_abs_diff": loss_diff}
        if (part, threads) == KD_CONFIGS[0]:  # the default also with the cross-entropy term (Triton: 4.41 ms)
            row["ce_alpha0.5_ms"] = median_ms(partial(be.kd_loss, s, t, temperature=T, alpha=0.5, labels=labels))
        rows.append(row)
        print(rows[-1], flush=True)


def copy_bandwidth() -> float:
    x = torch.randn(2**28, device=DEV)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / ms / 1e6


def bench_reduce(rows: list[dict]) -> None:
    n = 2**28
    x = torch.randn(n, device=DEV)
    ours = median_ms(lambda: reduce_value(x))
    ref = median_ms(lambda: torch.sum(x))
    value, ctas = reduce_value(x)
    rows.append({"op": "reduce_sum", "n": n, "ctas": ctas, "ms": ours, "gbps": 4 * n / ours / 1e6,
                 "torch_sum_ms": ref, "torch_sum_gbps": 4 * n / ref / 1e6, "ratio": ref / ours,
                 "abs_diff_vs_float64": abs(float(value) - float(x.double().sum()))})


def bench_stats(rows: list[dict]) -> None:
    N, L = 8192, 131072
    x = torch.randn(N, L, device=DEV) * 3
    copy_gbps = copy_bandwidth()
    ours = median_ms(lambda: BE.softmax_stats(x))
    ref = median_ms(lambda: torch.logsumexp(x, -1))
    m, l = BE.softmax_stats(x)
    lse_diff = float((m + torch.log(l) - torch.logsumexp(x.double(), -1)).abs().max())
    gbps = N * L * 4 / ours / 1e6
    rows.append({"op": "softmax_stats", "N": N, "L": L, "ms": ours, "gbps": gbps, "copy_gbps": copy_gbps,
                 "fraction_of_copy": gbps / copy_gbps, "torch_logsumexp_ms": ref, "lse_abs_diff": lse_diff})


SECTIONS: dict[str, Callable[[list[dict]], None]] = {
    "fwd": bench_fwd, "bwd": bench_bwd, "sweep": bench_sweep, "kd": bench_kd, "reduce": bench_reduce,
    "stats": bench_stats,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    result: dict[str, object] = {"device": props.name, "sm_count": props.multi_processor_count,
                                 "torch": torch.__version__, "rows": [], "errors": {}}
    for name in args.sections.split(","):
        try:
            SECTIONS[name](result["rows"])
        except Exception:  # one failing section must not lose the others' numbers
            result["errors"][name] = traceback.format_exc(limit=4)
        torch.cuda.empty_cache()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench.json").write_text(json.dumps(result, indent=1))
    for row in result["rows"]:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    for name, err in result["errors"].items():
        print(f"section {name} failed:\n{err}")


if __name__ == "__main__":
    main()
