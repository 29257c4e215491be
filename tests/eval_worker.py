"""Subprocess entry point for the distributed-evaluation test: evaluates a fixed tiny VAE on
fixed images into OUT_DIR (per-image files and rows.json, rank 0), sharded over the torchrun
ranks when launched by torchrun, in one process otherwise.

    python tests/eval_worker.py OUT_DIR [ACTIVE_UNIT_IMAGES]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/eval_worker.py OUT_DIR
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import TINY_VAE, TinyConfig, TinyVAE, realish_images

from harness.engine import distributed
from harness.engine.config import EvalConfig
from harness.engine.evaluate import evaluate

# 23 images in batches of 4: 6 batches, the last one partial, dealt unevenly to 2 ranks; active
# units from the first 10 images: batches 0 and 8 (cut to 2 images) on rank 0, 4 on rank 1. The
# untrained model's posterior means vary little across images: at the usual threshold (0.01)
# no unit is active and the counts would compare zeros, so the threshold is 0.001 here.
CONFIG = EvalConfig(batch_size=4, weights=("raw",), n_grid_samples=0, sample_repeats=1,
                    sample_warmup=0, flops=False, iw_k=2, iw_max_images=5, noise_seed=7,
                    active_units_max_images=10, active_unit_threshold=1e-3)


def main() -> None:
    out = Path(sys.argv[1])
    config = CONFIG if len(sys.argv) < 3 else dataclasses.replace(
        CONFIG, active_units_max_images=int(sys.argv[2]))
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    torch.manual_seed(0)
    model = TinyVAE(TinyConfig())
    rows = evaluate({"raw": model}, TINY_VAE, realish_images(23, seed=9), config, out)
    if info.is_main:
        (out / "rows.json").write_text(json.dumps({"world_size": info.world_size,
                                                   "rows": rows}, default=str))
    elif rows:
        raise SystemExit(f"rank {info.rank} returned rows")
    distributed.teardown()


if __name__ == "__main__":
    main()
