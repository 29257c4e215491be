"""One cell run by a group of torchrun-style ranks (local torchrun, a multi-task Slurm job): rank 0
claims the cell's lock and writes every file, the other ranks join the data-parallel training and
the evaluation's sharded likelihood passes, then wait for rank 0 to finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.engine import distributed, progress
from harness.engine.train import resolve_device
from harness.errors import UserError
from harness.experiment.schema import Cell
from harness.run import locks
from harness.run.cell import run_cell, train_follower
from harness.run.results_folder import CellContext, read_status, write_status
from harness.run.results_folder import cell_dir


def device_type(cells: list[Cell]) -> str:
    """The device type ("cuda" or "cpu") a process group running `cells` communicates on: their
    `train.device` ("auto": CUDA when visible), never merely whether CUDA exists, so a CPU cell
    under torchrun on a GPU machine all-reduces over gloo. One type for all of them: a group
    has one backend."""
    found = {cell.name: resolve_device(cell.train.device).type for cell in cells
             if cell.train is not None}
    kinds = sorted(set(found.values()))
    if len(kinds) > 1:
        examples = ", ".join(f"{next(n for n, k in found.items() if k == kind)} on {kind}"
                             for kind in kinds)
        raise UserError(f"under torchrun every cell runs in one process group, so train.device "
                        f"must give one device type for all of them ({examples}); set "
                        "train.device once for the experiment")
    if kinds:
        return kinds[0]
    return resolve_device("auto").type


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
            with progress.labelled(cell.name):
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
