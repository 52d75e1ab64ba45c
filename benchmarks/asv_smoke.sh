#!/usr/bin/env bash
# asv smoke run for CI: the asv suite on the current commit, one sample per benchmark (--quick), in the
# current Python (no environment is built, nothing is downloaded).
# Usage: bash benchmarks/asv_smoke.sh [BENCH_REGEX]
# (default: time_call of attention forward and of the reduction; '.' runs the whole default set).
# Everything asv writes — results, machine file, HTML — goes to a temporary folder that is removed
# afterwards (ASV_SMOKE_DIR=DIR keeps it there instead), so the user's .asv/results and ~/.asv-machine.json
# never see the smoke run. Exit status: asv's (2 when a benchmark failed, 1 when the regex selected none).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
python="${PYTHON:-$(command -v python)}"
regex="${1:-^asv_suite\.(AttentionForward|ReduceSum)\.time_call}"
if [[ -n "${ASV_SMOKE_DIR:-}" ]]; then
    work="$ASV_SMOKE_DIR"
    mkdir -p "$work"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi

# asv.conf.json with every path absolute and asv's output folders moved into $work.
"$python" - "$root" "$work" <<'EOF'
import json
import sys

from asv.util import load_json

root, work = sys.argv[1:]
conf = load_json(f"{root}/asv.conf.json", js_comments=True)
conf.update(repo=root, benchmark_dir=f"{root}/benchmarks", env_dir=f"{work}/env",
            results_dir=f"{work}/results", html_dir=f"{work}/html")
with open(f"{work}/asv.conf.json", "w", encoding="utf-8") as f:
    json.dump(conf, f, indent=1)
EOF

# The project importable from this checkout without installing it (asv passes ASV_PYTHONPATH on); HOME
# points at $work so that asv's machine file is written there.
export ASV_PYTHONPATH="$root${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}"
export HOME="$work"
"$python" -m asv machine --config "$work/asv.conf.json" --yes --machine ci-smoke >/dev/null
"$python" -m asv run --config "$work/asv.conf.json" --quick --show-stderr --machine ci-smoke \
    -E "existing:$python" --set-commit-hash "$(git rev-parse HEAD)" --bench "$regex"
