"""`python -m torch.distributed.run ... -m harness.run.launchers.torchrun_cell JOB_FILE`: one
cell on every local rank, the runner's `gpus_per_cell > 1` path. JOB_FILE holds the pickled
(CellTask, Cell) the runner wrote; every rank runs CellTask.run_distributed, the code a
multi-task Slurm job runs."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from harness.run.launchers.cell_task import HELD_ELSEWHERE
from harness.run.locks import EXIT_LOCKED


def main(argv: list[str]) -> int:
    with open(Path(argv[0]), "rb") as handle:
        job, cell = pickle.load(handle)
    status = job.run_distributed(cell)
    if status == HELD_ELSEWHERE:
        return EXIT_LOCKED
    return 0 if status in ("done", "follower") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
