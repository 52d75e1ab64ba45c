#!/usr/bin/env bash
# The GPU evidence in one command, run from the repository root on a GPU machine:
#   bash .ci/gpu-evidence.sh [OUTDIR]        (default reports/gpu)
# writes OUTDIR/conformance.jsonl (GPU backends, quick matrix), OUTDIR/bench.json, OUTDIR/asv/ (asv results
# for the current commit) and OUTDIR/report/ (the HTML report of all three), each carrying device, versions
# and commit. Works without installing the project (PYTHONPATH) and without a package registry: missing
# asv packages are taken from wheels in .whl/ (see docs/benchmarks.md), and a checkout copied without its
# git history is given one from .whl/repo.bundle (`git bundle create .whl/repo.bundle HEAD`).
# Every step has a time limit and writes as it goes, so a step that runs out leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-reports/gpu}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
backends="${ATTNSPEC_GPU_BACKENDS:-torch-flash torch-efficient torch-cudnn torch-math triton cupy}"

if ! git rev-parse HEAD >/dev/null 2>&1 && [ -f .whl/repo.bundle ]; then
    git init -q . && git fetch -q .whl/repo.bundle "HEAD:refs/heads/main" && git update-ref HEAD refs/heads/main
fi
export ATTNSPEC_COMMIT="${ATTNSPEC_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
if ! "$python" -c "import asv" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/attnspec-site .whl/*.whl \
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
step conformance "${ATTNSPEC_CONFORMANCE_SECONDS:-330}" "$python" -m conformance.cli conformance --quick \
    --device cuda --case-timeout 120 --results "$out/conformance.jsonl" "${args[@]}"
step bench "${ATTNSPEC_BENCH_SECONDS:-150}" "$python" -m benchmarks.bench --output "$out/bench.json" \
    "${args[@]}" ${ATTNSPEC_BENCH_ARGS:-}
step asv "${ATTNSPEC_ASV_SECONDS:-60}" bash -c "'$python' -m asv machine --yes --machine h200 >/dev/null && \
    ASV_PYTHONPATH='$PWD' '$python' -m asv run --quick --machine h200 -E 'existing:$python' \
    --set-commit-hash '$ATTNSPEC_COMMIT' --bench '^asv_suite\.(AttentionForward|ReduceSum)\.' && \
    mkdir -p '$out/asv' && cp -r .asv/results/h200 '$out/asv/' && cp .asv/results/benchmarks.json '$out/asv/'"
step report 60 "$python" -m reports.build --conformance "$out/conformance.jsonl" --bench "$out/bench.json" \
    --asv "$out/asv" --label H200 --output "$out/report"
