"""GPU benchmarks of the attention variants (issue 16) for the Triton and CuPy kernels, side by side in one run.

Usage: ``python -m benchmarks.kernel_tools.bench_variants --out variants.json`` (CUDA; ``--small`` for a smoke
run, also on the CPU with ``TRITON_INTERPRET=1``). Kernels are called below the contract (no boundary check,
no host reads of ``cu_seqlens`` / ``kv_lens`` inside the timed call); times are medians of
``triton.testing.do_bench`` (``bench_triton.median_ms``). bf16, D = 128 throughout.

- ``decode``: ``attention_decode_paged``, B = 64, Hq = 32, Hk = 8, Sq = 1, KV lengths 4k..32k, pages of 16 and
  64 keys in a shuffled order: KV bytes read per second (``2 B L Hk D 2`` bytes over the time) against the
  device-to-device copy rate (bytes read + written per second), and their ratio (goal >= 0.8).
- ``varlen``: a packed batch of lengths drawn from 64..8192 (log-uniform, seeded; causal), against dense
  attention of the same batch padded to the longest sequence; TFLOP/s on the visible pairs of each.
- ``window``: S = 32k, causal with a window of 4096 keys to the left, TFLOP/s counted on the visible pairs,
  against dense causal attention at the same S.
- ``fp8``: the e4m3 forward against the bf16 forward of the same backend (Triton; CuPy has no fp8 kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from benchmarks.kernel_tools import bench_triton
from benchmarks.kernel_tools.bench_triton import DEVICE, Recorder, copy_bandwidth, median_ms, tool_arguments

D = 128
BF16 = torch.bfloat16
FULL = dict(decode_batch=64, decode_lens=(4096, 8192, 16384, 32768), pages=(16, 64), varlen_tokens=65536,
            window_s=32768, window=4096, fp8_shape=(4, 16, 8192), heads=16)
SMALL = dict(decode_batch=2, decode_lens=(64,), pages=(16,), varlen_tokens=256, window_s=128, window=32,
             fp8_shape=(1, 2, 64), heads=2)


def kernels() -> dict[str, dict[str, Callable]]:
    """The kernel entry points of each available backend, by variant."""
    found: dict[str, dict[str, Callable]] = {}
    from implementations.triton import attention_fwd, decode_paged, varlen
    from implementations.triton.variants import KernelVariants

    config = attention_fwd.forward_config(D, BF16, torch.device(DEVICE))
    found["triton"] = dict(
        dense=lambda q, k, v, causal, window=None: attention_fwd.attention_forward(q, k, v, causal, D ** -0.5,
                                                                                    config, window=window),
        varlen=lambda q, k, v, cu, cuk, mq, mk: varlen.attention_varlen_forward(
            q, k, v, cu, cuk, mq, mk, KernelVariants("bottom_right"), D ** -0.5, config),
        decode=lambda *a: decode_paged.attention_decode_paged(*a, D ** -0.5),
        fp8=lambda q, k, v, ds: attention_fwd.attention_fp8(q, k, v, ds, None, D ** -0.5, config))
    if DEVICE == "cuda":
        try:
            from implementations.cupy.attention import attention_forward, launch_forward
            from implementations.cupy.variant_ops import decode_paged as cupy_decode
            from implementations.cupy.variant_ops import packed
        except ImportError:
            return found

        def cupy_varlen(q, k, v, cu, cuk, mq, mk):  # noqa: ANN001, ANN202
            out, lse = torch.empty_like(q), torch.empty(q.shape[1], q.shape[0], device=q.device)
            launch_forward(packed(q), packed(k), packed(v), packed(out), lse.unsqueeze(0), "bottom_right", None,
                           D ** -0.5, cu_seqlens=(cu, cuk, mq))
            return out, lse

        found["cupy"] = dict(
            dense=lambda q, k, v, causal, window=None: attention_forward(q, k, v, causal, D ** -0.5, window=window),
            varlen=cupy_varlen, decode=lambda *a: cupy_decode(*a, D ** -0.5, None))
    return found


def bench_decode(found: dict, sizes: dict, copy_gbs: float) -> list[dict]:
    rows = []
    B, hq, hk = sizes["decode_batch"], 32, 8
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    for length in sizes["decode_lens"]:
        for page in sizes["pages"]:
            per_seq = length // page
            k_pages, v_pages = (torch.randn(B * per_seq, page, hk, D, device=DEVICE, dtype=BF16) for _ in range(2))
            table = torch.randperm(B * per_seq, device=DEVICE, generator=gen).to(torch.int32).view(B, per_seq)
            lens = torch.full((B,), length, dtype=torch.int32, device=DEVICE)
            q = torch.randn(B, hq, 1, D, device=DEVICE, dtype=BF16)
            kv_bytes = 2 * B * length * hk * D * 2
            for name, fns in found.items():
                ms = median_ms(partial(fns["decode"], q, k_pages, v_pages, table, lens))
                gbs = kv_bytes / ms / 1e6
                rows.append(dict(backend=name, kv_len=length, page=page, ms=ms, kv_gbs=gbs,
                                 copy_gbs=copy_gbs, of_copy=gbs / copy_gbs))
    return rows


def bench_varlen(found: dict, sizes: dict) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    lengths: list[int] = []
    while sum(lengths) < sizes["varlen_tokens"]:
        lengths.append(int(math.exp(torch.empty(1).uniform_(math.log(64), math.log(8192), generator=gen))))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    H, longest = sizes["heads"], max(lengths)
    q, k, v = (torch.randn(int(cu[-1]), H, D, device=DEVICE, dtype=BF16) for _ in range(3))
    padded = [torch.randn(len(lengths), H, longest, D, device=DEVICE, dtype=BF16) for _ in range(3)]
    flops = 2 * H * D * sum(n * (n + 1) for n in lengths)  # causal: n(n+1)/2 pairs of 4 D FLOPs
    rows = []
    for name, fns in found.items():
        packed_ms = median_ms(partial(fns["varlen"], q, k, v, cu, cu, longest, longest))
        padded_ms = median_ms(partial(fns["dense"], *padded, "bottom_right"))
        rows.append(dict(backend=name, sequences=len(lengths), tokens=int(cu[-1]), longest=longest,
                         varlen_ms=packed_ms, padded_ms=padded_ms, varlen_tflops=flops / packed_ms / 1e9,
                         speedup=padded_ms / packed_ms))
    return rows


def bench_window(found: dict, sizes: dict) -> list[dict]:
    S, w, H = sizes["window_s"], sizes["window"], sizes["heads"]
    q, k, v = (torch.randn(1, H, S, D, device=DEVICE, dtype=BF16) for _ in range(3))
    window_pairs = sum(min(i + 1, w + 1) for i in range(S))
    causal_pairs = S * (S + 1) // 2
    rows = []
    for name, fns in found.items():
        window_ms = median_ms(partial(fns["dense"], q, k, v, "bottom_right", window=(w, 0)))
        causal_ms = median_ms(partial(fns["dense"], q, k, v, "bottom_right"))
        rows.append(dict(backend=name, S=S, window=w, window_ms=window_ms, causal_ms=causal_ms,
                         window_tflops=4 * D * H * window_pairs / window_ms / 1e9,
                         causal_tflops=4 * D * H * causal_pairs / causal_ms / 1e9))
    return rows


def bench_fp8(found: dict, sizes: dict) -> list[dict]:
    B, H, S = sizes["fp8_shape"]
    q, k, v = (torch.randn(B, H, S, D, device=DEVICE, dtype=BF16) for _ in range(3))
    e4m3 = [x.to(torch.float8_e4m3fn) for x in (q, k, v)]
    ones = tuple(torch.tensor(1.0, device=DEVICE) for _ in range(3))
    flops = 4 * B * H * S * S * D
    rows = []
    for name, fns in found.items():
        if "fp8" not in fns:
            continue
        fp8_ms = median_ms(partial(fns["fp8"], *e4m3, ones))
        bf16_ms = median_ms(partial(fns["dense"], q, k, v, None))
        rows.append(dict(backend=name, B=B, H=H, S=S, fp8_ms=fp8_ms, bf16_ms=bf16_ms,
                         fp8_tflops=flops / fp8_ms / 1e9, bf16_tflops=flops / bf16_ms / 1e9))
    return rows


def main() -> None:
    args = tool_arguments(__doc__, "variants_bench.json", "decode,varlen,window,fp8")
    sizes = SMALL if args.small else FULL
    if args.small:
        bench_triton.SIZES.update(bench_triton.SMALL)  # the copy-rate buffer too
    rec = Recorder(args.out)
    found = kernels()
    rec.put("machine", {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (interpreter)",
                        "torch": torch.__version__, "backends": sorted(found), "sizes": sizes})
    sections = args.sections.split(",")
    runs = {"decode": lambda: bench_decode(found, sizes, copy_bandwidth()),
            "varlen": lambda: bench_varlen(found, sizes), "window": lambda: bench_window(found, sizes),
            "fp8": lambda: bench_fp8(found, sizes)}
    for section in sections:
        rows = runs[section]()
        rec.put(section, rows)
        for row in rows:
            print(section, " ".join(f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}"
                                    for key, val in row.items()), flush=True)


if __name__ == "__main__":
    main()
