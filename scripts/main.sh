#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the main job: the depth sweep on Fashion-MNIST with its
# report. Extra arguments go to `harness run`, e.g. `bash scripts/main.sh --dry-run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec harness run experiments/depth_sweep.yaml "$@"
