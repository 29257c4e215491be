#!/usr/bin/env bash
# One prepared run of the CUDA paths (scripts/gpu_check.py): smoke experiment on cuda, bf16 vs
# float32 and TF32 agreement, torchrun with NCCL, training and sampling throughput, recorded in
# ${OUT:-gpu_check}/gpu_check.json. Under 10 minutes on one H200; refuses (exit 2) without CUDA.
# On a GPU machine whose python3 already holds torch (and pyyaml, pandas, matplotlib, seaborn,
# tqdm, pillow), no virtualenv is needed: `bash scripts/gpu_check.sh`. Extra arguments go to the
# script, e.g. `--quick --allow-cpu` to test its code paths on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" scripts/gpu_check.py --out "${OUT:-gpu_check}" "$@"
