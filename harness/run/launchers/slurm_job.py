"""What runs inside one Slurm job: one cell, under its lock, into the shared results folder.

`CellJob` is pickled by submitit at submission and called on the compute node with one `Cell`.
It is a `submitit.helpers.Checkpointable`: on Slurm's timeout or preemption signal submitit
requeues the same call, and the trainer resumes from the newest checkpoint in the cell's folder
(bit for bit, harness.engine.train), so a requeued cell ends with the same result as an
uninterrupted one. A job requeued from outside (`scontrol requeue`) resumes the same way.

A cell with several tasks (runner.slurm.gpus_per_cell > 1) runs the torchrun code path: the
tasks form one process group from Slurm's variables, rank 0 holds the lock, trains with the
others, evaluates and writes every file; the other ranks train and wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import submitit
import torch

from harness import atomic
from harness.engine import distributed
from harness.contract import LAUNCH_FILE
from harness.experiment.schema import Cell
from harness.run import locks
from harness.run.cell import run_cell
from harness.run.results_folder import CellContext, read_status, write_status
from harness.run.ranks import run_on_ranks
from harness.run.results_folder import cell_dir, rebuild_shared_files
from harness.run.speed_phase import run_speed_phase


# What a job returns (submitit pickles it; the runner reads status.json, not this).
HELD_ELSEWHERE = "held elsewhere"


@dataclass
class CellJob(submitit.helpers.Checkpointable):
    context: CellContext
    root: str
    cells: tuple[Cell, ...]      # every cell of the experiment: the job rebuilds summary.csv
    summary_weights: str

    def __call__(self, cell: Cell) -> str:
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or 1)
        torch.set_num_threads(max(1, threads))
        root = Path(self.root)
        if int(os.environ.get("SLURM_NTASKS") or 1) > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                 overwrite=True)
            return self.run_distributed(cell)
        lock = locks.CellLock(cell_dir(root, cell.name), root)
        if not lock.acquire():
            return HELD_ELSEWHERE
        try:
            status = read_status(cell_dir(root, cell.name))
            if status.get("status") != "done":
                status = run_cell(cell, self.context, cell_dir(root, cell.name))
            record_job(cell_dir(root, cell.name))
        finally:
            lock.release()
        rebuild_shared_files(root, list(self.cells), self.summary_weights)
        return str(status.get("status"))

    def run_distributed(self, cell: Cell) -> str:
        """Every rank of a torchrun-style process group (RANK, WORLD_SIZE, MASTER_ADDR in the
        environment) runs this: rank 0 claims the lock, trains, evaluates and writes."""
        root = Path(self.root)
        info = distributed.setup("cuda" if torch.cuda.is_available() else "cpu")
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


@dataclass
class SpeedPhaseJob(submitit.helpers.Checkpointable):
    """The speed phase as one Slurm job (harness.run.speed_phase), submitted to start after the
    cells' job array has ended: every pending sampling-speed measurement, one at a time, alone
    on its node's share; a requeue redoes only what is not yet recorded."""

    context: CellContext
    root: str
    cells: tuple[Cell, ...]      # the cells to measure (the runnable ones)
    summary_cells: tuple[Cell, ...]
    summary_weights: str

    def __call__(self) -> str:
        threads = max(1, int(os.environ.get("SLURM_CPUS_PER_TASK") or 1))
        failed = run_speed_phase(Path(self.root), list(self.cells), self.context, threads,
                                 list(self.summary_cells), self.summary_weights,
                                 wait_for_others_s=0)  # the array has ended: nothing to wait for
        return "failed: " + ", ".join(failed) if failed else "done"


def record_job(directory: Path) -> None:
    """Add this job's id and log path to the cell's status.json (the cell's own fields kept)."""
    status = read_status(directory)
    launch = read_launch(directory)
    write_status(directory, **{**status, "slurm_job_id": locks.slurm_job_id(),
                               "log": launch.get("stdout")})


def read_launch(directory: Path) -> dict:
    return atomic.read_json_object(Path(directory) / LAUNCH_FILE)
