#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the test suite, benchmarks included as one-shot smoke
# runs. The default run leaves out the trials marked `slow` (whole `harness run` processes killed,
# raced or filled up; torchrun; Slurm), so that it stays lean: `--all` runs them too.
# Other arguments go to pytest, e.g. `bash scripts/test.sh -k dmol` or `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
args=() select=(-m "not slow")
for arg in "$@"; do
  case "$arg" in
    --all) select=() ;;
    -m|-m*) select=(); args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
exec python -m pytest "${select[@]}" "${args[@]}"
