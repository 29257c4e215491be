"""One cell handed to another process: a local torchrun child (harness.run.launchers.
torchrun_cell) or a Slurm job (harness.run.launchers.slurm_job subclasses `CellTask` for
submitit). Nothing here imports submitit, so the local launcher runs where it is not installed.

`run_distributed` is what every rank of a torchrun-style group runs: the group communicates on
the device the cell trains on (`ranks.device_type`: NCCL for cuda, gloo for cpu), rank 0 claims
the lock, trains with the others, evaluates and writes every file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import atomic
from harness.contract import LAUNCH_FILE
from harness.engine import distributed
from harness.experiment.schema import Cell
from harness.run import locks
from harness.run.ranks import device_type, run_on_ranks
from harness.run.results_folder import (CellContext, read_status, rebuild_shared_files,
                                        write_status)

# What a task returns when another runner holds its cell (submitit pickles the return value;
# the runner reads status.json, not this).
HELD_ELSEWHERE = "held elsewhere"


@dataclass
class CellTask:
    context: CellContext
    root: str
    cells: tuple[Cell, ...]      # every cell of the experiment: the task rebuilds summary.csv
    summary_weights: str

    def run_distributed(self, cell: Cell) -> str:
        """Every rank of a torchrun-style process group (RANK, WORLD_SIZE, MASTER_ADDR in the
        environment) runs this: rank 0 claims the lock, trains, evaluates and writes."""
        root = Path(self.root)
        info = distributed.setup(device_type([cell]))
        try:
            return self._ranks(cell, root, info)
        finally:
            distributed.teardown()

    def _ranks(self, cell: Cell, root: Path, info) -> str:
        record = record_job if locks.slurm_job_id() is not None else None
        status = run_on_ranks(cell, self.context, root, info, after_run=record)
        if status is None:
            return HELD_ELSEWHERE
        if not info.is_main:
            return "follower"
        rebuild_shared_files(root, list(self.cells), self.summary_weights)
        return str(status.get("status"))


def record_job(directory: Path) -> None:
    """Add this Slurm job's id and log path to the cell's status.json (its own fields kept)."""
    status = read_status(directory)
    launch = read_launch(directory)
    write_status(directory, **{**status, "slurm_job_id": locks.slurm_job_id(),
                               "log": launch.get("stdout")})


def read_launch(directory: Path) -> dict:
    """The cell's slurm.json (written at submission), {} when it has none."""
    return atomic.read_json_object(Path(directory) / LAUNCH_FILE)
