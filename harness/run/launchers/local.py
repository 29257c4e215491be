"""Cells on this machine: the runner's own process or spawned job processes (one per parallel
job, each on its own devices when GPUs are given, or a torchrun child for a multi-GPU cell), and
the torchrun path where every rank runs the same cells and rank 0 writes the files."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harness import atomic
from harness.contract import STATUS_FILE
from harness.engine import progress
from harness.run import locks
from harness.run.cell import run_cell
from harness.run.results_folder import CellContext, read_status
from harness.run.console import outcome, say
from harness.run.launchers import gpus
from harness.run.launchers.cell_task import CellTask
from harness.run.progress import fmt_duration
from harness.run.ranks import run_on_ranks
from harness.run.results_folder import cell_dir, rebuild_shared_files

EXIT_LOCKED = locks.EXIT_LOCKED  # a worker found its cell claimed by another runner


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the runner dies, so no orphan holds a stale cell."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_locked(cell, context: CellContext, root: Path, announce=None) -> dict | None:
    """Claim the cell's lock, run it, release; None when another runner holds it."""
    lock = locks.CellLock(cell_dir(root, cell.name), root)
    if not lock.acquire():
        return None
    try:
        status = read_status(cell_dir(root, cell.name))
        if status.get("status") == "done":  # another runner finished it since we looked
            return {**status, "finished_elsewhere": True}
        if announce is not None:
            announce()
        if lock.reclaimed_from:
            say(f"  {cell.name}: reclaimed the lock of a dead runner "
                f"(pid {lock.reclaimed_from.get('pid')}); resuming")
        if lock.removed_temporaries:
            say(f"  {cell.name}: removed {len(lock.removed_temporaries)} half-written "
                "temporary file(s) of a killed run")
        with progress.labelled(cell.name):
            return run_cell(cell, context, cell_dir(root, cell.name))
    finally:
        lock.release()


def _worker(cell, context: CellContext, root: str, threads: int,
            devices: tuple[int, ...] = ()) -> None:
    if devices:  # before anything initialises CUDA in this process
        os.environ.update(gpus.cuda_env(devices))
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM → KeyboardInterrupt
    torch.set_num_threads(threads)
    status = _run_locked(cell, context, Path(root))
    if status is None or status.get("finished_elsewhere"):
        sys.exit(EXIT_LOCKED)
    sys.exit(0 if status["status"] == "done" else 1)


# --------------------------------------------------------------------------- the run


class _Progress:
    def __init__(self, plan, total_cells: int, jobs: int):
        self.estimates = {e.name: e.seconds for e in plan.cells}
        self.total = total_cells
        self.jobs = jobs
        self.started = time.perf_counter()
        self.done_estimate = 0.0
        self.done_actual = 0.0
        self.count = 0

    def eta(self, remaining: list[str], running: dict[str, float]) -> str:
        ratio = self.done_actual / self.done_estimate if self.done_estimate > 0 else 1.0
        left = sum(self.estimates.get(n, 0) for n in remaining)
        now = time.perf_counter()
        left += sum(max(0.0, self.estimates.get(n, 0) - (now - t)) for n, t in running.items())
        return fmt_duration(ratio * left / self.jobs)

    def finished(self, name: str, status: dict, seconds: float) -> str:
        self.count += 1
        self.done_estimate += self.estimates.get(name, 0.0)
        self.done_actual += seconds
        return f"[{self.count}/{self.total}] {name}: {status.get('status')}"


class _Torchrun:
    """A `torchrun` child running one cell on several local GPUs, looking like a Process."""

    def __init__(self, cell, context: CellContext, root: Path, summary_cells, weights: str,
                 devices: tuple[int, ...], threads: int):
        job_file = cell_dir(root, cell.name) / "torchrun_job.pkl"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job = CellTask(context=context, root=str(root.resolve()), cells=tuple(summary_cells),
                      summary_weights=weights)
        atomic.write_bytes(job_file, pickle.dumps((job, cell)))
        env = {**os.environ, **gpus.cuda_env(devices), "OMP_NUM_THREADS": str(threads)}
        self.popen = subprocess.Popen(gpus.torchrun_command(job_file, len(devices)), env=env)
        self.pid = self.popen.pid

    def start(self) -> None:
        pass  # started in __init__

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)

    def terminate(self) -> None:
        self.popen.terminate()

    @property
    def exitcode(self) -> int | None:
        return self.popen.returncode


def run_cells(pending, context, root: Path, jobs: int, threads: int, plan,
               summary_cells, summary_weights: str,
               slots: list[tuple[int, ...]] = ()) -> tuple[list[str], list[str]]:
    """Run `pending` cells; return (failed names, names left to other runners).

    `slots` (local GPUs, harness.run.launchers.gpus): one device group per parallel job; a
    cell runs on a free group, under torchrun when the group has several devices."""
    slots = list(slots)
    if slots:
        jobs = len(slots)
    progress = _Progress(plan, len(pending), jobs)
    failed: list[str] = []
    elsewhere: list[str] = []
    queue = list(pending)
    running: dict[str, tuple[Any, float]] = {}

    def finish(cell, status: dict | None, seconds: float) -> None:
        if status is None or status.get("finished_elsewhere"):
            elsewhere.append(cell.name)
            say(f"  {cell.name}: " + ("done by another runner" if status else
                                       "running in another runner; skipped here"))
            return
        if status.get("status") != "done":
            failed.append(cell.name)
        line = progress.finished(cell.name, status, seconds)
        detail = outcome(root, cell.name, status)
        names_left = [c.name for c in queue]
        eta = progress.eta(names_left, {n: t for n, (_, t) in running.items()})
        say(f"{line} in {fmt_duration(seconds)}{detail}" + (f"; ETA {eta}" if names_left
                                                               or running else ""))
        rebuild_shared_files(root, summary_cells, summary_weights)

    if jobs == 1 and not slots:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            while queue:
                cell = queue.pop(0)
                estimate = fmt_duration(progress.estimates.get(cell.name))
                start = time.perf_counter()
                status = _run_locked(cell, context, root, announce=lambda c=cell, e=estimate:
                                     say(f"→ {c.name} ({c.kind}, est {e})"))
                finish(cell, status, time.perf_counter() - start)
        except KeyboardInterrupt:
            rebuild_shared_files(root, summary_cells, summary_weights)  # record what finished
            raise
        finally:
            torch.set_num_threads(previous)
        return failed, elsewhere

    spawn = multiprocessing.get_context("spawn")
    free = list(slots)
    devices_of: dict[str, tuple[int, ...]] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.pop(0)
                if locks.held_elsewhere(cell_dir(root, cell.name)):
                    finish(cell, None, 0.0)
                    continue
                devices = free.pop(0) if slots else ()
                devices_of[cell.name] = devices
                if len(devices) > 1:
                    process = _Torchrun(cell, context, root, summary_cells, summary_weights,
                                        devices, threads)
                else:
                    process = spawn.Process(target=_worker, name=f"harness-{cell.name}",
                                            args=(cell, context, str(root), threads, devices))
                process.start()
                running[cell.name] = (process, time.perf_counter())
                where = f", {gpus.describe(devices)}" if devices else ""
                say(f"→ {cell.name} ({cell.kind}, est "
                    f"{fmt_duration(progress.estimates.get(cell.name))}, pid {process.pid}"
                    f"{where})")
            time.sleep(0.2)
            for name, (process, started) in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                del running[name]
                if devices_of.get(name):
                    free.append(devices_of.pop(name))
                cell = next(c for c in pending if c.name == name)
                status = read_status(cell_dir(root, name))
                if process.exitcode == EXIT_LOCKED:
                    status = None
                elif process.exitcode != 0 and status.get("status") not in ("done", "failed"):
                    status = {"status": "failed", "wall_s": status.get("wall_s"),
                              "error": f"worker process died (exit code {process.exitcode}); "
                                       f"see {cell_dir(root, name)}"}
                    atomic.write_json(cell_dir(root, name) / STATUS_FILE, status)
                finish(cell, status, time.perf_counter() - started)
    except KeyboardInterrupt:
        for process, _ in running.values():
            if process.is_alive():
                process.terminate()
        for process, _ in running.values():
            process.join(timeout=30)
        rebuild_shared_files(root, summary_cells, summary_weights)
        raise
    return failed, elsewhere


def run_cells_distributed(pending, context, root: Path, summary_cells,
                           summary_weights: str, info) -> tuple[list[str], list[str]]:
    """Under torchrun: every rank runs the same cells in the same order; rank 0 claims locks,
    evaluates and writes all files, the other ranks join the data-parallel training and the
    sharded likelihood passes of the evaluation, then wait (polling status.json, not a
    collective, so rank 0's remaining evaluation cannot time out NCCL)."""
    order = [[c.name for c in pending] if info.is_main else None]
    dist.broadcast_object_list(order, src=0)  # rank 0's order (longest first) for every rank
    by_name = {c.name: c for c in summary_cells}
    pending = [by_name[name] for name in order[0]]
    failed: list[str] = []
    elsewhere: list[str] = []
    for index, cell in enumerate(pending):
        start = time.perf_counter()
        status = run_on_ranks(cell, context, root, info, announce=lambda i=index, c=cell: say(
            f"→ [{i + 1}/{len(pending)}] {c.name} ({c.kind}, {info.world_size} ranks)"))
        if status is None:
            elsewhere.append(cell.name)
            say(f"  {cell.name}: handled by another runner; skipped here")
            continue
        if info.is_main:
            if status.get("status") != "done":
                failed.append(cell.name)
            say(f"[{index + 1}/{len(pending)}] {cell.name}: {status.get('status')} in "
                f"{fmt_duration(time.perf_counter() - start)}{outcome(root, cell.name, status)}")
            rebuild_shared_files(root, summary_cells, summary_weights)
    return failed, elsewhere
