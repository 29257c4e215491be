#!/usr/bin/env bash
# Timed benchmarks (pytest-benchmark). Extra arguments go to pytest, e.g. `-k pixelcnn`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest benchmarks --benchmark-enable --benchmark-only \
    --benchmark-columns=min,median,max,rounds "$@"
