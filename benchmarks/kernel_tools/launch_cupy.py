"""Host time of the CuPy launch path, and what the reduction's timing is made of, on one GPU.

Run from the repository root on a GPU machine with CuPy: ``python3 -m benchmarks.kernel_tools.launch_cupy
--out FILE``; prints and writes the JSON. Host times are ``perf_counter`` microseconds per call over a loop
of calls without synchronisation (what a launch costs the CPU: stream handles, a DLPack view against the
address argument the launches pass, context entry). GPU times of the cupy and triton reductions and
``torch.sum`` at 2^24, 2^26 and 2^28 floats are the harness's ``cuda_timing`` (eager, then CUDA-graph replay,
which removes host time) and ``triton.testing.do_bench``, in milliseconds: where eager exceeds graph replay,
the call is host-bound.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def host_us(fn: Callable[[], object], n: int = 2000) -> float:
    """Host microseconds per call of ``fn`` over ``n`` calls without synchronisation, after 20 warm-up calls."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("launch_cupy.json"), help="the JSON file written")
    args = parser.parse_args()
    import cupy  # needs CuPy and a GPU: imported after --help is answered
    from triton.testing import do_bench

    from benchmarks.timing import cuda_timing
    from conformance.codec import to_json
    from conformance.provenance import collect
    from implementations.cupy import _kernels as K
    from implementations.cupy import backends as cupy_backends
    from implementations.cupy.backend import reduce_value
    from implementations.triton import reduce as treduce

    def device_ctx() -> None:
        with cupy.cuda.Device(0):
            pass

    def device_and_stream_ctx() -> None:
        with cupy.cuda.Device(0), K._cupy_stream(torch.cuda.current_stream().cuda_stream, 0):
            pass

    res: dict[str, object] = {}
    x = torch.randn(1 << 28, device="cuda")
    ts = torch.cuda.current_stream()
    res["stream_from_external_us"] = host_us(lambda: cupy.cuda.Stream.from_external(ts))
    res["external_stream_new_us"] = host_us(lambda: cupy.cuda.ExternalStream(ts.cuda_stream, 0))
    res["dlpack_as_cupy_us"] = host_us(lambda: cupy.from_dlpack(x))
    res["pointer_arg_us"] = host_us(lambda: K.pointer(x, 0))
    res["device_ctx_us"] = host_us(device_ctx)
    res["device_and_cached_stream_ctx_us"] = host_us(device_and_stream_ctx)
    res["torch_empty_us"] = host_us(lambda: torch.empty((264,), device="cuda"))
    res["get_device_properties_us"] = host_us(lambda: torch.cuda.get_device_properties(x.device))
    be = cupy_backends()
    for n in (24, 26, 28):
        xv = x[: 1 << n]
        calls = {"cupy": lambda xv=xv: reduce_value(xv), "triton": lambda xv=xv: treduce.sum_with_schedule(xv),
                 "torch.sum": lambda xv=xv: torch.sum(xv)}
        r: dict[str, object] = {"cupy_reduce_sum_host_us": host_us(lambda xv=xv: be.reduce_sum(xv), 500)}
        for name, fn in calls.items():
            r[f"{name}_host_us"] = host_us(fn, 500)
            r[f"{name}_events_ms"] = cuda_timing(fn).median_s * 1e3
            graph = cuda_timing(fn, cuda_graph=True)
            r[f"{name}_graph_ms"] = graph.median_s * 1e3
            r[f"{name}_graph_method"] = graph.method[:80]
            r[f"{name}_do_bench_ms"] = do_bench(fn)
        res[f"n2^{n}"] = r
    data = {"provenance": to_json(collect()), **res}
    print(json.dumps(data, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
