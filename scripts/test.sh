#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite, benchmarks included as one-shot
# smoke runs. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k dmol`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest "$@"
