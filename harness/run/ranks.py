"""One cell run by a group of torchrun-style ranks (local torchrun, a multi-task Slurm job): rank 0
claims the cell's lock and writes every file, the other ranks join the data-parallel training and
the evaluation's sharded likelihood passes, then wait for rank 0 to finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.engine import distributed
from harness.experiment.schema import Cell
from harness.run import locks
from harness.run.cell import run_cell, train_follower
from harness.run.results_folder import CellContext, read_status, write_status
from harness.run.results_folder import cell_dir


def run_on_ranks(cell: Cell, context: CellContext, root: Path, info: distributed.DistInfo,
                 announce: Callable[[], None] | None = None,
                 after_run: Callable[[Path], None] | None = None) -> dict | None:
    """Run `cell` on every rank of the group; None (on every rank) when another runner holds it
    or it is done. Rank 0 gets the final status, announced before and `after_run(cell folder)`
    while still holding the lock; the others get the status rank 0 wrote. Followers poll
    status.json rather than wait in a collective, so a long evaluation cannot time out NCCL."""
    directory = cell_dir(root, cell.name)
    lock = locks.CellLock(directory, root)
    run = False
    if info.is_main:
        previous = read_status(directory)
        run = lock.acquire() and previous.get("status") != "done"
        if lock.acquired and not run:
            lock.release()
        if run:  # before the broadcast, so no rank can read a stale "failed" below
            write_status(directory, "running", wall_s=previous.get("wall_s"))
    if not distributed.broadcast_object(run, info):
        return None
    if info.is_main:
        if announce is not None:
            announce()
        try:
            status = run_cell(cell, context, directory)
            if after_run is not None:
                after_run(directory)
        finally:
            lock.release()
        return status
    if cell.kind == "train":
        train_follower(cell, context, directory)
    while (status := read_status(directory)).get("status") not in ("done", "failed"):
        time.sleep(2.0)
    return status
