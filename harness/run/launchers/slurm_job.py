"""What runs inside one Slurm job: one cell, under its lock, into the shared results folder.

`CellJob` is pickled by submitit at submission and called on the compute node with one `Cell`.
It is a `submitit.helpers.Checkpointable`: on Slurm's timeout or preemption signal submitit
requeues the same call, and the trainer resumes from the newest checkpoint in the cell's folder
(bit for bit, harness.engine.train), so a requeued cell ends with the same result as an
uninterrupted one. A job requeued from outside (`scontrol requeue`) resumes the same way.

A cell with several tasks (runner.slurm.tasks_per_cell, or gpus_per_cell > 1) runs the torchrun
code path (`CellTask.run_distributed`): the tasks form one process group from Slurm's variables,
on the device the cell trains on, rank 0 holds the lock, trains with the others, evaluates and
writes every file; the other ranks train and wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import submitit
import torch

from harness.contract import LAUNCH_FILE
from harness.engine import progress
from harness.experiment.schema import Cell
from harness.run import locks
from harness.run.cell import run_cell
from harness.run.launchers.cell_task import HELD_ELSEWHERE, CellTask, read_launch, record_job
from harness.run.results_folder import CellContext, cell_dir, read_status, rebuild_shared_files
from harness.run.speed_phase import run_speed_phase

__all__ = ["HELD_ELSEWHERE", "LAUNCH_FILE", "CellJob", "SpeedPhaseJob", "read_launch",
           "record_job"]


@dataclass
class CellJob(CellTask, submitit.helpers.Checkpointable):
    """A `CellTask` that submitit pickles and calls on the compute node with one `Cell`."""

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
                with progress.labelled(cell.name):
                    status = run_cell(cell, self.context, cell_dir(root, cell.name))
            record_job(cell_dir(root, cell.name))
        finally:
            lock.release()
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
