"""attnspec benchmarks: one workload table shared by ``attnspec bench``, pytest-benchmark and asv.

The benchmark operations are defined in the operations' modules (``implementations.ops.BENCH_OPS``). Modules:
:mod:`benchmarks.workloads` (the table read from them, input seeding, rates, the memory sweep),
:mod:`benchmarks.timing` (GPU and CPU timing, machine ceilings), :mod:`benchmarks.gate` (the correctness gate
every backend passes before it is timed), :mod:`benchmarks.baselines` (the baselines, internal rows such as
``torch-compile`` and ``torch.sum`` among them), :mod:`benchmarks.bench` (the ``attnspec bench`` command),
:mod:`benchmarks.asv_suite` (the asv suite) and ``test_bench_pytest.py`` (pytest-benchmark);
:mod:`benchmarks.kernel_tools` times and checks one GPU backend's kernels below the contract.
See docs/benchmarks.md.
"""
