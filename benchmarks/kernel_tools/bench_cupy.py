"""Benchmarks of the cupy backend against torch on one GPU; prints a table and writes JSON.

Usage, from the repository root on a GPU machine with CuPy:
    python3 -m benchmarks.kernel_tools.bench_cupy --out FILE [--sections fwd,bwd,sweep,kd,reduce,stats]

Every timing is the median of ``triton.testing.do_bench`` (CUDA events) on fresh random inputs, after warm-up
(compilation and autotuning stay outside the timed region). Rates:
- attention forward FLOPs ``4 B H S^2 D`` (halved when causal), backward 2.5 x forward (SPEC), against
  ``F.scaled_dot_product_attention`` restricted to the flash backend;
- KD loss: forward + gradient, against ``torch.compile`` of the unfused formula
  ``kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, "batchmean") T^2`` and its autograd backward;
  ``kd_part`` at the backend's default (columns per part, threads), also with the cross-entropy term
  (alpha = 0.5 with labels), and at each of ``KD_SWEEP``; bandwidth counts the fewest bytes (read s and t, write ds);
- reduction of 2^28 float32 against ``torch.sum`` (bytes read / time);
- softmax statistics of a [8192, 131072] float32 matrix against the device-to-device copy bandwidth
  (bytes read + written by ``Tensor.copy_`` / time).
A section that fails records its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from triton.testing import do_bench

if TYPE_CHECKING:
    from implementations.cupy.backend import CupyBackend

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


def bench_fwd(be: CupyBackend, rows: list[dict]) -> None:
    for S in (1024, 4096, 16384):
        q, k, v, _ = _attn_inputs(S)
        for causal in (False, True):
            variant = "top_left" if causal else None
            ours = median_ms(partial(be.attention, q, k, v, causal=variant))
            ref = median_ms(partial(_sdpa_flash, q, k, v, causal))
            out, _ = be.attention(q, k, v, causal=variant)
            diff = float((out.float() - _sdpa_flash(q, k, v, causal).float()).abs().max())
            flops = _attn_flops(q, causal)
            rows.append({"op": "attention_fwd", "S": S, "B": q.shape[0], "H": 16, "D": 128, "causal": causal,
                         "ms": ours, "tflops": flops / ours / 1e9, "sdpa_flash_ms": ref,
                         "sdpa_flash_tflops": flops / ref / 1e9, "ratio": ref / ours, "max_abs_diff_vs_sdpa": diff})


def bench_sweep(be: CupyBackend, rows: list[dict]) -> None:
    """Forward tilings at D = 128 (the backend's default is FwdConfig(2, 64))."""
    from implementations.cupy.attention import FwdConfig, attention_forward

    q, k, v, _ = _attn_inputs(4096)
    scale = 1 / math.sqrt(128)
    for causal in (False, True):
        variant = "top_left" if causal else None
        for cfg in (FwdConfig(2, 64), FwdConfig(2, 32), FwdConfig(1, 64), FwdConfig(1, 128)):
            ms = median_ms(partial(attention_forward, q, k, v, variant, scale, cfg))
            rows.append({"op": "attention_fwd_tiling", "S": 4096, "causal": causal, "mt": cfg.mt, "bc": cfg.bc,
                         "block_m": cfg.block_m, "ms": ms, "tflops": _attn_flops(q, causal) / ms / 1e9})


def bench_bwd(be: CupyBackend, rows: list[dict]) -> None:
    for S in (1024, 4096, 16384):
        q, k, v, dout = _attn_inputs(S)
        for causal in (False, True):
            variant = "top_left" if causal else None
            out, lse = be.attention(q, k, v, causal=variant)
            ours = median_ms(partial(be.attention_backward, q, k, v, out, lse, dout, causal=variant))
            qr, kr, vr = (x.detach().requires_grad_() for x in (q, k, v))
            o = _sdpa_flash(qr, kr, vr, causal)
            ref = median_ms(partial(torch.autograd.grad, o, (qr, kr, vr), dout, retain_graph=True))
            ours_g = be.attention_backward(q, k, v, out, lse, dout, causal=variant)
            ref_g = torch.autograd.grad(o, (qr, kr, vr), dout)
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours_g, ref_g))
            flops = 2.5 * _attn_flops(q, causal)
            rows.append({"op": "attention_bwd", "S": S, "B": q.shape[0], "H": 16, "D": 128, "causal": causal,
                         "ms": ours, "tflops": flops / ours / 1e9, "sdpa_flash_ms": ref,
                         "sdpa_flash_tflops": flops / ref / 1e9, "ratio": ref / ours, "max_abs_diff_vs_sdpa": diff})


#: (columns per part, threads per CTA) of ``kd_part`` timed by the KD section besides the backend's default
KD_SWEEP = ((8192, 128), (4096, 128), (16384, 256))


def bench_kd(be: CupyBackend, rows: list[dict]) -> None:
    from implementations.cupy.backend import KD_PART, KD_THREADS, kd_split

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
    configs = ((KD_PART, KD_THREADS), *KD_SWEEP)
    for part, threads in configs:
        tuned = type(be)()
        tuned.kd_part_cols, tuned.kd_threads = part, threads
        loss, ds = tuned.kd_loss(s, t, temperature=T)
        diff = float((ds - ref_ds).abs().max())
        loss_diff = abs(float(loss) - ref_loss)
        del ds
        ours = median_ms(partial(tuned.kd_loss, s, t, temperature=T))
        row = {"op": "kd_loss_fwd_bwd", "N": N, "V": V, "dtype": "float32", "T": T, "part": part,
               "threads": threads, "parts": kd_split(V, N, sms, part)[0], "ms": ours,
               "gbps_min_bytes": nbytes / ours / 1e6, "torch_compile_ms": ref, "speedup": ref / ours,
               "max_abs_diff_ds": diff, "loss_abs_diff": loss_diff}
        if (part, threads) == configs[0]:  # the default also with the cross-entropy term
            row["ce_alpha0.5_ms"] = median_ms(partial(tuned.kd_loss, s, t, temperature=T, alpha=0.5,
                                                      labels=labels))
        rows.append(row)
        print(rows[-1], flush=True)


def copy_bandwidth() -> float:
    x = torch.randn(2**28, device=DEV)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / ms / 1e6


def bench_reduce(be: CupyBackend, rows: list[dict]) -> None:
    from implementations.cupy.backend import reduce_value

    n = 2**28
    x = torch.randn(n, device=DEV)
    ours = median_ms(lambda: reduce_value(x))
    ref = median_ms(lambda: torch.sum(x))
    value, ctas = reduce_value(x)
    rows.append({"op": "reduce_sum", "n": n, "ctas": ctas, "ms": ours, "gbps": 4 * n / ours / 1e6,
                 "torch_sum_ms": ref, "torch_sum_gbps": 4 * n / ref / 1e6, "ratio": ref / ours,
                 "abs_diff_vs_float64": abs(float(value) - float(x.double().sum()))})


def bench_stats(be: CupyBackend, rows: list[dict]) -> None:
    N, L = 8192, 131072
    x = torch.randn(N, L, device=DEV) * 3
    copy_gbps = copy_bandwidth()
    ours = median_ms(lambda: be.softmax_stats(x))
    ref = median_ms(lambda: torch.logsumexp(x, -1))
    m, l = be.softmax_stats(x)
    lse_diff = float((m + torch.log(l) - torch.logsumexp(x.double(), -1)).abs().max())
    gbps = N * L * 4 / ours / 1e6
    rows.append({"op": "softmax_stats", "N": N, "L": L, "ms": ours, "gbps": gbps, "copy_gbps": copy_gbps,
                 "fraction_of_copy": gbps / copy_gbps, "torch_logsumexp_ms": ref, "lse_abs_diff": lse_diff})


SECTIONS: dict[str, Callable[[CupyBackend, list[dict]], None]] = {
    "fwd": bench_fwd, "bwd": bench_bwd, "sweep": bench_sweep, "kd": bench_kd, "reduce": bench_reduce,
    "stats": bench_stats,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_cupy.json"), help="the JSON file written")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    args = parser.parse_args()
    from implementations.cupy import backends  # needs CuPy and a GPU: imported after --help is answered

    be = backends()
    props = torch.cuda.get_device_properties(0)
    result: dict[str, object] = {"device": props.name, "sm_count": props.multi_processor_count,
                                 "torch": torch.__version__, "rows": [], "errors": {}}
    for name in args.sections.split(","):
        try:
            SECTIONS[name](be, result["rows"])
        except Exception:  # one failing section must not lose the others' numbers
            result["errors"][name] = traceback.format_exc(limit=4)
        torch.cuda.empty_cache()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    for row in result["rows"]:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    for name, err in result["errors"].items():
        print(f"section {name} failed:\n{err}")


if __name__ == "__main__":
    main()
