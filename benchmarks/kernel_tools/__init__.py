"""Tools that time or check the kernels of one GPU backend directly, below the backend contract.

``attnspec bench`` times every backend through the contract on one workload table; these tools go under it,
to choose and explain a kernel's design on a GPU machine. Each is run as ``python -m
benchmarks.kernel_tools.<name> --help``:

- ``bench_triton``: the Triton kernels' launch-config sweeps (attention forward and backward tiles, KD parts,
  reduction lanes, softmax-statistics blocks) against SDPA flash, ``torch.compile`` and ``torch.sum``;
- ``bench_cupy``: the same for the CuPy kernels (forward tilings, ``kd_part`` parts and threads);
- ``sanitize_cupy``: tiny calls of every CuPy kernel under each ``compute-sanitizer`` tool;
- ``launch_cupy``: host time of the CuPy launch path against GPU time of the reduction;
- ``profile_kernels``: Nsight Compute metrics (occupancy, pipe activity, throughputs, warp stalls) of the
  Triton and CuPy attention and KD kernels, one ncu run per target, and what limits each kernel
  (``ncu_report`` reads ncu's CSV, ``profile_targets`` holds the targets' shapes).

Their recorded outputs are GPU evidence and live in ``reports/gpu/kernels/`` (see its README).
"""
