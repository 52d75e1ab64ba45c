"""attnspec benchmarks: one workload table shared by ``attnspec bench``, pytest-benchmark and asv.

Modules: :mod:`benchmarks.workloads` (shapes, FLOP and byte counts, how to call each operation),
:mod:`benchmarks.timing` (GPU and CPU timing, machine ceilings), :mod:`benchmarks.gate` (the correctness gate
every backend passes before it is timed), :mod:`benchmarks.baselines` (internal baseline rows such as
``torch-compile`` and ``torch.sum``), :mod:`benchmarks.bench` (the ``attnspec bench`` command),
:mod:`benchmarks.asv_suite` (the asv suite) and ``test_bench_pytest.py`` (pytest-benchmark);
:mod:`benchmarks.kernel_tools` times and checks one GPU backend's kernels below the contract.
See docs/benchmarks.md.
"""
