#!/usr/bin/env bash
# asv smoke run for CI: the quick asv suite on the current commit, in the current Python (no environment
# is built, nothing is downloaded). Usage: bash benchmarks/asv_smoke.sh [BENCH_REGEX]
# (default: the time_ benchmarks of attention forward and the reduction; '.' runs the whole quick suite).
# Results go to .asv/results (ignored by git). Exit status: asv's (2 when a benchmark failed, 1 when the
# regex selected none).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$(command -v python)}"
regex="${1:-^asv_suite\.(AttentionForward|ReduceSum)\.time_call}"
# The project importable from this checkout without installing it (asv passes ASV_PYTHONPATH on).
export ASV_PYTHONPATH="$PWD${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}"
"$python" -m asv machine --yes --machine ci-smoke >/dev/null
exec "$python" -m asv run --quick --show-stderr --machine ci-smoke -E "existing:$python" \
    --set-commit-hash "$(git rev-parse HEAD)" --bench "$regex"
