#!/usr/bin/env bash
# One prepared run of the CUDA paths (scripts/gpu_check.py, docs/gpu.md): matmul peak, the smoke
# experiment on the GPU, bf16 and TF32 against float32, a process group through torchrun (NCCL),
# several GPUs when there are, training and sampling throughput, torch.compile; recorded in
# ${OUT:-gpu_check}/gpu_check.json. Estimated up front; stops starting sections at 5 minutes;
# refuses (exit 2) without CUDA. No dataset, no download, no submitit: a GPU machine's python3
# with torch, pyyaml, pandas, matplotlib, seaborn, tqdm and pillow is enough. Extra arguments go
# to the script, e.g. `--quick --allow-cpu` to test its code paths on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" scripts/gpu_check.py --out "${OUT:-gpu_check}" "$@"
