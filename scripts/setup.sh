#!/usr/bin/env bash
# Create .venv with everything the harness and its tests need. Idempotent: re-running is fast.
# torch is installed explicitly first: `torch==2.13.0` is the CPU build these machines keep on
# local disk; a bare `torch` requirement would make pip download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${HARNESS_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# pip here warns about every package missing from the machine's local mirrors: noise, not errors.
pip_install() {
    pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if ! python -c "import torch" 2>/dev/null; then
    echo "setup: installing $TORCH_SPEC" >&2
    pip_install "$TORCH_SPEC"
fi
if ! python -c "import harness, pytest_benchmark, seaborn, PIL, submitit" 2>/dev/null \
        || [ pyproject.toml -nt .venv/.harness-installed ]; then
    echo "setup: installing the harness and its dependencies" >&2
    pip_install -e ".[dev]"
    touch .venv/.harness-installed
fi

# Real data: Fashion-MNIST from Debian's package, when apt is here and we may use it.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "setup: installing dataset-fashion-mnist (apt)" >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 \
             && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
        || echo "setup: could not install dataset-fashion-mnist; tests needing it will skip" >&2
fi

# A one-node Slurm cluster for the launcher tests (tests/slurm_cluster.py starts it): Debian's
# slurm-wlm and munge, when apt is here and we are root. Without them those tests skip.
if ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ] \
        && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing slurm-wlm and munge (apt)" >&2
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1; }) \
        || echo "setup: could not install slurm-wlm/munge; the Slurm tests will skip" >&2
fi
