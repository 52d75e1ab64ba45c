#!/usr/bin/env bash
# The GPU evidence in one command, run from the repository root on a GPU machine:
#   bash .ci/gpu-evidence.sh [OUTDIR]        (default reports/gpu)
# OUTDIR receives data only, each file carrying device, versions and commit: conformance.jsonl.gz (GPU backends,
# quick matrix), bench.json (attention with the memory sweep) and bench-rows.json (KD, softmax statistics,
# reduction), asv/ (asv results for the current commit), and with the opt-in step "kernels" kernels/ (the
# kernel tools' sweeps, benchmarks/kernel_tools), with the opt-in step "profile" kernels/profile.json (Nsight
# Compute metrics of the Triton and CuPy kernels). At the end .ci/pack_evidence.py stores them compact.
# Each backend x chapter's conformance log goes to ATTNSPEC_LOG_DIR
# (default ${TMPDIR:-/tmp}/attnspec-gpu-logs), packed into one file, ATTNSPEC_LOG_DIR.tar.gz, per run; the
# step "report" builds the HTML pages into ATTNSPEC_REPORT_DIR (default ${TMPDIR:-/tmp}/attnspec-gpu-report).
# Neither goes into OUTDIR.
# Works without installing the project (PYTHONPATH) and without a package registry: missing asv packages
# come from Python 3.12 wheels in .whl/, fetched beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl asv==0.6.6 asv_runner==0.3.2 json5 pympler virtualenv distlib \
#     platformdirs python-discovery packaging zipp 'importlib_metadata==8.7.0'
# (importlib_metadata 10 needs lazy_importer, which is not there); the step "adapters" adds the adapters'
# packages to .whl/ the same way: liger_kernel-0.8.5-py3-none-any.whl and
# xformers-0.0.35-py39-none-manylinux_2_28_x86_64.whl (`pip download --no-deps liger-kernel==0.8.5
# xformers==0.0.35`; flashinfer's 101 MB wheel and flash-attn, which has no wheel, stay out: docs/adapters.md).
# Every wheel in .whl/ is installed --no-deps into /tmp/attnspec-site, put on PYTHONPATH. A checkout copied without its git
# history is given one from .whl/repo.bundle (`git bundle create .whl/repo.bundle HEAD`).
# Every step has a time limit and writes as it goes, so a step that runs out leaves what it measured. The
# default limits: conformance 170 s, attention bench 150 s, row bench 120 s, asv 540 s, report 60 s, kernel
# tools 240 s; on the H200 conformance took 112-127 s, the attention bench 115-121 s, and asv's attention
# tracks 294 s for triton alone (throughput, and the ratios to compiled flex and SDPA cuDNN, which compile and
# time those in each of its processes). A machine with 10-minute calls runs the default steps in three:
# ATTNSPEC_STEPS="conformance bench", "rows", "asv report". asv tracks the GPU kernels' rates and ratios
# (ATTNSPEC_ASV_BACKENDS="triton cupy"; each with the operation's baseline, which asv's params add).
# ATTNSPEC_STEPS picks steps (default: "conformance bench rows asv report"; "kernels", "variants",
# "variants-bench", "adapters", "adapters-bench", "cupy-tests", "sanitize", "profile" and "dist" (2 GPUs: ATTNSPEC_STEPS=dist
# on the 2-GPU machine, skipped with a message on one GPU) are opt-in), so the evidence can be gathered over
# several calls of a time-limited machine; ATTNSPEC_ROWS_OPS
# the row operations benchmarked, ATTNSPEC_ASV_BENCH the asv benchmark regex and ATTNSPEC_ASV_BACKENDS the
# backends asv parametrises, ATTNSPEC_GPU_BACKENDS the backends, ATTNSPEC_CHAPTERS the conformance chapters.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-reports/gpu}"
logs="${ATTNSPEC_LOG_DIR:-${TMPDIR:-/tmp}/attnspec-gpu-logs}"
report_dir="${ATTNSPEC_REPORT_DIR:-${TMPDIR:-/tmp}/attnspec-gpu-report}"
mkdir -p "$out" "$logs"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
backends="${ATTNSPEC_GPU_BACKENDS:-torch-flash torch-efficient torch-cudnn torch-math triton cupy}"
steps=" ${ATTNSPEC_STEPS:-conformance bench rows asv report} "
wants() { [[ "$steps" == *" $1 "* ]]; }

# The bundle names the commit this tree is; a machine that keeps files between sessions may hold a .git of
# an older one, so the bundle's head always wins (mixed reset: the working tree is left as it is).
if [ -f .whl/repo.bundle ]; then
    { git rev-parse --git-dir >/dev/null 2>&1 || git init -q .; } && git fetch -q .whl/repo.bundle HEAD \
        && git update-ref refs/heads/main FETCH_HEAD && git symbolic-ref HEAD refs/heads/main && git reset -q
fi
export ATTNSPEC_COMMIT="${ATTNSPEC_COMMIT:-$(git rev-parse --verify -q HEAD || echo unknown)}"
export ATTNSPEC_ASV_BACKENDS="${ATTNSPEC_ASV_BACKENDS-triton cupy}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/attnspec-site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/attnspec-site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

step() {  # step NAME SECONDS COMMAND...: run with a limit, report how it ended
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    echo "== $name ended with status $? after $((SECONDS - start))s"
}

args=()
for b in $backends; do args+=(--backend "$b"); done
# Conformance: every backend x chapter in a process of its own, all at once (correctness does not depend on
# timing, memory probes are per process, and the float64 oracle runs on the CPU cores), the result files
# concatenated afterwards in order. Each process gets one CPU thread (ATTNSPEC_CONFORMANCE_THREADS): thirty
# processes with a thread pool per core each oversubscribe the cores, and the tiny oracle products then
# take seconds instead of milliseconds (measured on the H200 machine's 16 cores: 3-18 s per small case).
conformance_runs() {  # conformance_runs NAME OUTFILE "BACKENDS" "CHAPTERS": all backend x chapter runs at once
    local name=$1 outfile=$2 limit="${ATTNSPEC_CONFORMANCE_SECONDS:-170}" b c
    echo "== $name (limit ${limit}s): $3 x $4"
    local start=$SECONDS
    for b in $3; do
        for c in $4; do
            OMP_NUM_THREADS="${ATTNSPEC_CONFORMANCE_THREADS:-1}" timeout --signal=INT --kill-after=20 "$limit" \
                "$python" -m conformance.cli conformance --quick --device "${ATTNSPEC_DEVICE:-cuda}" \
                --case-timeout 120 --backend "$b" -k "$c" --results "$logs/$name-$b-$c.jsonl" \
                > "$logs/$name-$b-$c.log" 2>&1 &
        done
    done
    wait
    echo "== $name ended after $((SECONDS - start))s"
    : > "$outfile"
    for b in $3; do
        for c in $4; do
            cat "$logs/$name-$b-$c.jsonl" >> "$outfile" 2>/dev/null && rm -f "$logs/$name-$b-$c.jsonl"
            echo "-- $b $c: $(grep -E '^\[1/1\].* log: ' "$logs/$name-$b-$c.log" | head -1)"
        done
    done
}
chapters="${ATTNSPEC_CHAPTERS:-test_attention test_gradients test_softmax_stats test_kd_loss test_work_depth}"
wants conformance && conformance_runs conformance "$out/conformance.jsonl" "$backends" "$chapters"
# Benchmarks, one at a time: attention on the quick table (D 128, S 1k/4k/16k, causal and not) with the
# memory sweep, then the full tables of the row operations (KD 8192 x 131072, stats, reduction up to 2^28).
wants bench && step bench-attention "${ATTNSPEC_BENCH_SECONDS:-150}" "$python" -m benchmarks.bench --quick \
    --memory-scaling --op attention --op attention_backward --output "$out/bench.json" "${args[@]}"
row_ops=()
for op in ${ATTNSPEC_ROWS_OPS:-kd_loss softmax_stats reduce_sum}; do row_ops+=(--op "$op"); done
wants rows && step bench-rows "${ATTNSPEC_BENCH_ROWS_SECONDS:-120}" "$python" -m benchmarks.bench "${row_ops[@]}" \
    --output "$out/bench-rows.json" "${args[@]}"
wants asv && step asv "${ATTNSPEC_ASV_SECONDS:-540}" bash -c "'$python' -m asv machine --yes --machine h200 >/dev/null && \
    ASV_PYTHONPATH='$PWD' '$python' -m asv run --quick --machine h200 -E 'existing:$python' \
    --set-commit-hash '$ATTNSPEC_COMMIT' --bench '${ATTNSPEC_ASV_BENCH:-^asv_suite\.(AttentionForward\.(track_tflops|track_vs_flex|track_vs_cudnn)|ReduceSum\.track_gbps)}' && \
    mkdir -p '$out/asv' && cp -r .asv/results/h200 '$out/asv/' && cp .asv/results/benchmarks.json '$out/asv/'"
# Kernel tools (opt-in): the Triton and CuPy kernels' launch-config sweeps below the backend contract.
if wants kernels; then
    mkdir -p "$out/kernels"
    step kernels-triton "${ATTNSPEC_KERNELS_SECONDS:-240}" "$python" -m benchmarks.kernel_tools.bench_triton \
        --out "$out/kernels/bench_triton.json"
    step kernels-cupy "${ATTNSPEC_KERNELS_SECONDS:-240}" "$python" -m benchmarks.kernel_tools.bench_cupy \
        --out "$out/kernels/bench_cupy.json"
fi
# Variants (opt-in): "variants", the attention-variant chapters' conformance for the kernel backends and the
# torch kernels (ATTNSPEC_VARIANT_BACKENDS, default every GPU backend:
# "triton cupy torch-flash torch-efficient torch-cudnn torch-math"; ATTNSPEC_VARIANT_CHAPTERS) into
# variants-conformance.jsonl; "variants-bench", the variant benchmarks of benchmarks/kernel_tools/bench_variants.py
# (decode KV bytes/s against the copy rate, varlen against padding, window 4096 at S = 32k against dense causal,
# fp8 against bf16) into kernels/bench_variants.json.
wants variants && conformance_runs variants "$out/variants-conformance.jsonl" \
    "${ATTNSPEC_VARIANT_BACKENDS:-triton cupy torch-flash torch-efficient torch-cudnn torch-math}" \
    "${ATTNSPEC_VARIANT_CHAPTERS:-test_variants test_varlen test_decode test_fp8}"
if wants variants-bench; then
    mkdir -p "$out/kernels"
    step kernels-variants "${ATTNSPEC_VARIANT_BENCH_SECONDS:-300}" "$python" -m benchmarks.kernel_tools.bench_variants \
        --out "$out/kernels/bench_variants.json"
fi
# CuPy kernel tests (opt-in step "cupy-tests"): tests/test_cupy_backend_gpu.py and tests/test_cupy_variants_gpu.py
# against their oracles on the GPU; a JUnit file per run goes to the logs (ATTNSPEC_LOG_DIR), not to OUTDIR.
wants cupy-tests && step cupy-tests "${ATTNSPEC_CUPY_TESTS_SECONDS:-300}" "$python" -m pytest -q -p no:cacheprovider \
    tests/test_cupy_backend_gpu.py tests/test_cupy_variants_gpu.py --junitxml "$logs/cupy-tests.xml"
# Sanitizer (opt-in step "sanitize", needs compute-sanitizer on PATH; run it alone in a call): every CuPy kernel's
# tiny calls under memcheck, racecheck, synccheck and initcheck (benchmarks/kernel_tools/sanitize_cupy.py), each
# tool limited to ATTNSPEC_SANITIZE_TOOL_SECONDS (default 130), into kernels/sanitize.json.
if wants sanitize; then
    mkdir -p "$out/kernels"
    step sanitize "${ATTNSPEC_SANITIZE_SECONDS:-560}" "$python" -m benchmarks.kernel_tools.sanitize_cupy \
        --out "$out/kernels/sanitize.json" --seconds "${ATTNSPEC_SANITIZE_TOOL_SECONDS:-130}"
fi
# Profile (opt-in step "profile", needs ncu on PATH; run it alone in a call): benchmarks/kernel_tools/
# profile_kernels.py runs each target (ATTNSPEC_PROFILE_TARGETS, comma-separated, default all six: triton-fwd,
# cupy-fwd, triton-bwd, cupy-bwd, triton-kd, cupy-kd) under ncu, each with a limit of
# ATTNSPEC_PROFILE_TARGET_SECONDS (default 150), and rewrites kernels/profile.json after each: per kernel launch
# registers, shared memory, occupancy, pipe activity, SM and DRAM throughput, warp stalls and what limits it.
# The step's limit, ATTNSPEC_PROFILE_SECONDS, is 480 s by default: each target is a process of its own that loads
# torch, compiles its kernels (a cold cache on a fresh machine) and has ncu replay every launch about ten times.
if wants profile; then
    mkdir -p "$out/kernels"
    profile_targets=()
    [ -n "${ATTNSPEC_PROFILE_TARGETS:-}" ] && profile_targets=(--sections "$ATTNSPEC_PROFILE_TARGETS")
    step profile "${ATTNSPEC_PROFILE_SECONDS:-480}" "$python" -m benchmarks.kernel_tools.profile_kernels \
        --out "$out/kernels/profile.json" --target-seconds "${ATTNSPEC_PROFILE_TARGET_SECONDS:-150}" \
        "${profile_targets[@]}"
fi
# DIST (opt-in step "dist", needs 2 GPUs; run it alone in a call): into OUTDIR/dist/, the DIST chapter of
# ring-triton and torch-cp over NCCL (dist-conformance.jsonl), the GPU backends' conformance spread over 2 GPUs against 1
# (speedup.json; both runs' results, which must hold the same cases and statuses, go to ATTNSPEC_LOG_DIR), and
# ring attention at S = 128k over 2 GPUs against 1 GPU, not causal and causal (ring-bench.json,
# ring-bench-causal.json).
if wants dist; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    if [ "$gpus" -lt 2 ]; then
        echo "== dist skipped: it needs 2 GPUs, this machine has $gpus"
    else
        mkdir -p "$out/dist"
        step dist-conformance "${ATTNSPEC_DIST_SECONDS:-150}" "$python" -m conformance.cli conformance --quick \
            --device cuda --backend ring-triton --backend torch-cp --clause DIST \
            --results "$out/dist/dist-conformance.jsonl"
        step dist-speedup "${ATTNSPEC_DIST_SPEEDUP_SECONDS:-300}" "$python" -m benchmarks.conformance_speedup \
            --base "--gpus 1 --jobs ${ATTNSPEC_DIST_JOBS:-8}" --spread "--gpus 2 --jobs ${ATTNSPEC_DIST_JOBS:-8}" \
            --output "$out/dist/speedup.json" --results-dir "$logs" -- --quick --device cuda --case-timeout 120 "${args[@]}"
        step ring-bench 60 "$python" -m benchmarks.ring_bench --seq-len 131072 --world 2 \
            --output "$out/dist/ring-bench.json"
        step ring-bench-causal 60 "$python" -m benchmarks.ring_bench --seq-len 131072 --world 2 --causal \
            --output "$out/dist/ring-bench-causal.json"
    fi
fi
# Adapters (opt-in): the built-in adapters of the kernels people use (docs/adapters.md), ATTNSPEC_ADAPTER_BACKENDS
# (default "flex liger-kl liger-jsd xformers"; liger and xformers from the wheels in .whl/), on the attention,
# gradient, KD, variant and varlen chapters (ATTNSPEC_ADAPTER_CHAPTERS) into adapters-conformance.jsonl;
# "adapters-bench": the attention bench of compiled flex beside SDPA cuDNN (and torch-flash, the baseline) in one
# process into adapters-bench.json.
wants adapters && conformance_runs adapters "$out/adapters-conformance.jsonl" \
    "${ATTNSPEC_ADAPTER_BACKENDS:-flex liger-kl liger-jsd xformers}" \
    "${ATTNSPEC_ADAPTER_CHAPTERS:-test_attention test_gradients test_kd_loss test_variants test_varlen}"
wants adapters-bench && step bench-adapters "${ATTNSPEC_ADAPTER_BENCH_SECONDS:-240}" "$python" -m benchmarks.bench \
    --quick --op attention --op attention_backward --backend flex --backend torch-cudnn \
    --output "$out/adapters-bench.json"
"$python" .ci/pack_evidence.py "$out"
report_inputs=()
for f in bench.json bench-rows.json; do [ -f "$out/$f" ] && report_inputs+=("$out/$f"); done
wants report && step report 60 "$python" -m reports.build --conformance "$out/conformance.jsonl.gz" \
    --bench "${report_inputs[@]}" --asv "$out/asv" --label H200 --output "$report_dir"
tar czf "$logs.tar.gz" -C "$logs" . && echo "== logs: $logs.tar.gz; evidence: $out; report: $report_dir"
