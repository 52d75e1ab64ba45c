"""One tiny call of every kernel of the cupy backend, for compute-sanitizer (memcheck, racecheck).

Usage on a GPU machine with CuPy, from the repository root:
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 -m benchmarks.kernel_tools.sanitize_cupy
(without torch's caching allocator every tensor is its own allocation, so memcheck sees out-of-bounds
accesses that would otherwise land inside a cached block). Prints one line per call and ``sanitize: done``.
"""

from __future__ import annotations

import argparse
import math

import torch


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from implementations.cupy import backends  # needs CuPy and a GPU: imported after --help is answered

    be = backends()
    dev = "cuda"
    torch.manual_seed(0)
    attention_cases = [  # B, Hq, Hk, Sq, Sk, D, causal: element loads, 16-byte loads, wide head
        (1, 2, 1, 33, 47, 59, "bottom_right"),
        (1, 2, 2, 70, 20, 64, "bottom_right"),
        (1, 2, 1, 17, 9, 256, "top_left"),
        (1, 1, 1, 65, 130, 128, None),
    ]
    for B, Hq, Hk, Sq, Sk, D, causal in attention_cases:
        q = torch.randn(B, Hq, Sq, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, Hk, Sk, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(B, Hk, Sk, D, device=dev, dtype=torch.bfloat16)
        out, lse = be.attention(q, k, v, causal=causal)
        dq, dk, dv = be.attention_backward(q, k, v, out, lse, torch.randn_like(out), causal=causal)
        torch.cuda.synchronize()
        print(f"attention fwd+bwd B{B} H{Hq}/{Hk} {Sq}x{Sk} D{D} {causal}: finite "
              f"{all(bool(torch.isfinite(x).all()) for x in (out, dq, dk, dv))}")
    x = torch.randn(3, 1001, device=dev)
    for block in (None, 37):
        be.softmax_stats(x, block=block)
    be.softmax_stats(torch.randn(2, 1024, device=dev, dtype=torch.float16))
    m, l = be.softmax_stats(x)
    be.softmax_merge(m, l, m.flip(0), l.flip(0))
    torch.cuda.synchronize()
    print("softmax_stats, softmax_merge: ok")
    multi = type(be)()
    multi.kd_part_cols = 64  # 5 parts of kd_part per row at V = 300 (the last one of 44 columns)
    kd_cases = [  # backend, V, dtype, labelled (16-byte loads at 1024, 5000 and 300, scalar loads at 1001)
        (be, 1001, torch.float32, True),
        (be, 1024, torch.float32, False),
        (be, 5000, torch.bfloat16, True),
        (multi, 300, torch.float32, True),
    ]
    for kd_be, V, dtype, labelled in kd_cases:
        s, t = torch.randn(4, V, device=dev).to(dtype), torch.randn(4, V, device=dev).to(dtype)
        t[0, : V // 2] = -math.inf  # a counted row whose teacher logits start masked
        labels = torch.tensor([0, -100, V - 1, 5], device=dev) if labelled else None
        loss, ds = kd_be.kd_loss(s, t, temperature=2.0, alpha=0.5 if labelled else 1.0, labels=labels)
        torch.cuda.synchronize()
        print(f"kd_loss V={V} {dtype} labelled={labelled} part={kd_be.kd_part_cols}: loss {float(loss):.4f}, "
              f"ds finite {bool(torch.isfinite(ds).all())}")
    value, sched = be.reduce_sum(torch.randn(5000, device=dev))
    print(f"reduce_sum n=5000: {float(value):.4f} ({sched.kind})")
    print("sanitize: done")


if __name__ == "__main__":
    main()
