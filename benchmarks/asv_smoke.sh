#!/usr/bin/env bash
# asv smoke run for CI: the quick asv suite on the current commit, in the current Python (no environment
# is built, nothing is downloaded). Usage: bash benchmarks/asv_smoke.sh [BENCH_REGEX]
# (default: the time_ benchmarks of attention forward and the reduction; '.' runs the whole quick suite).
# Results go to .asv/results (ignored by git); exit status non-zero if any benchmark failed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$(command -v python)}"
regex="${1:-^asv_suite\.(AttentionForward|ReduceSum)\.time_call}"
# The project importable from this checkout without installing it (asv passes ASV_PYTHONPATH on).
export ASV_PYTHONPATH="$PWD${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}"
"$python" -m asv machine --yes --machine ci-smoke >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$python" -m asv run --quick --show-stderr --machine ci-smoke -E "existing:$python" \
    --set-commit-hash "$(git rev-parse HEAD)" --bench "$regex" 2>&1 | tee "$log"
# asv run exits 0 even when a benchmark fails; its progress line for one ends in "failed".
if grep -Eq '^\[ *[0-9.]+%\] [·.]+ [^ ]+ +failed$' "$log"; then
    echo "asv smoke: some benchmarks failed" >&2
    exit 1
fi
