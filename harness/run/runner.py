"""`harness run FILE`: expand an experiment into cells, print the plan, run the cells, write the
results folder of docs/results.md and build the report.

* Completed cells are skipped; interrupted ones resume (the trainer restarts from the newest
  checkpoint in the cell's folder); failed ones are retried. A failing cell is recorded
  (status.json, summary row) and the others go on; the exit status is 1 if any cell failed.
* `jobs` > 1 runs cells in that many spawned processes, each with `cores // jobs` torch threads
  (or `runner.threads_per_job`), longest cells first.
* `--launcher slurm` (or `runner.launcher: slurm`) submits the pending cells as one Slurm job array
  through submitit instead (harness.run.launchers.slurm) and, unless `--no-wait`, follows them.
* Two runners on one results folder never run a cell twice: the process that runs a cell holds
  its lock (`harness.run.locks`); the shared files (`metrics.jsonl`, `summary.csv`) are rebuilt from
  the cells' own files, atomically, under an flock.
"""

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
import yaml

from harness import atomic
from harness.contract import STATUS_FILE, pick
from harness.engine import distributed
from harness.errors import UserError
from harness.experiment.load import load_experiment
from harness.experiment.schema import Cell, ExperimentConfig
from harness.report import build_report
from harness.run import locks
from harness.run.cell import (CellContext, check_checkpoints, load_splits, missing_inputs,
                              read_rows, read_status, run_cell, train_follower, write_status)
from harness.run.launchers import gpus, slurm
from harness.run.launchers.slurm_job import CellJob
from harness.run.plan import Plan, fmt_bytes, fmt_duration, make_plan, makespan
from harness.run.provenance import available_cores
from harness.run.results_folder import (cell_dir, check_resumable, default_results_dir,
                                        rebuild_shared_files)

EXIT_LOCKED = locks.EXIT_LOCKED  # a worker found its cell claimed by another runner


def _say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- workers


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
            _say(f"  {cell.name}: reclaimed the lock of a dead runner "
                 f"(pid {lock.reclaimed_from.get('pid')}); resuming")
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


def _result_line(root: Path, name: str) -> str:
    rows = read_rows(cell_dir(root, name))
    best = pick(rows, "test_bits_per_dim", weights="raw") or pick(rows, "test_bits_per_dim")
    if best is None:
        return ""
    weights = f" ({best['weights']})" if best.get("weights") else ""
    return f", test {best['value']:.3f} bits/dim{weights}"


class _Torchrun:
    """A `torchrun` child running one cell on several local GPUs, looking like a Process."""

    def __init__(self, cell, context: CellContext, root: Path, summary_cells, weights: str,
                 devices: tuple[int, ...], threads: int):
        job_file = cell_dir(root, cell.name) / "torchrun_job.pkl"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job = CellJob(context=context, root=str(root.resolve()), cells=tuple(summary_cells),
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


def _run_cells(pending, context, root: Path, jobs: int, threads: int, plan,
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
            _say(f"  {cell.name}: " + ("done by another runner" if status else
                                       "running in another runner; skipped here"))
            return
        if status.get("status") != "done":
            failed.append(cell.name)
        line = progress.finished(cell.name, status, seconds)
        detail = (f": {status.get('error')}" if status.get("status") == "failed"
                  else _result_line(root, cell.name))
        names_left = [c.name for c in queue]
        eta = progress.eta(names_left, {n: t for n, (_, t) in running.items()})
        _say(f"{line} in {fmt_duration(seconds)}{detail}" + (f"; ETA {eta}" if names_left
                                                               or running else ""))
        rebuild_shared_files(root, summary_cells, summary_weights)

    def held_elsewhere(cell) -> bool:
        holder = locks.read_lock(cell_dir(root, cell.name) / locks.LOCK_NAME)
        return holder is not None and not locks.is_stale(holder, cell_dir(root, cell.name))

    if jobs == 1 and not slots:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            while queue:
                cell = queue.pop(0)
                estimate = fmt_duration(progress.estimates.get(cell.name))
                start = time.perf_counter()
                status = _run_locked(cell, context, root, announce=lambda c=cell, e=estimate:
                                     _say(f"→ {c.name} ({c.kind}, est {e})"))
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
                if held_elsewhere(cell):
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
                _say(f"→ {cell.name} ({cell.kind}, est "
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


def _run_cells_distributed(pending, context, root: Path, summary_cells,
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
        decision = [None]
        lock = None
        if info.is_main:
            lock = locks.CellLock(cell_dir(root, cell.name), root)
            previous = read_status(cell_dir(root, cell.name))
            run = lock.acquire() and previous.get("status") != "done"
            if not run and lock.acquired:
                lock.release()
            if run:  # before the broadcast, so no rank can read a stale "failed" below
                write_status(cell_dir(root, cell.name), "running",
                             wall_s=previous.get("wall_s"))
            decision = [run]
        dist.broadcast_object_list(decision, src=0)
        if not decision[0]:
            elsewhere.append(cell.name)
            _say(f"  {cell.name}: handled by another runner; skipped here")
            continue
        start = time.perf_counter()
        if info.is_main:
            _say(f"→ [{index + 1}/{len(pending)}] {cell.name} ({cell.kind}, "
                 f"{info.world_size} ranks)")
            try:
                status = run_cell(cell, context, cell_dir(root, cell.name))
            finally:
                lock.release()
            if status.get("status") != "done":
                failed.append(cell.name)
            detail = (f": {status.get('error')}" if status.get("status") == "failed"
                      else _result_line(root, cell.name))
            _say(f"[{index + 1}/{len(pending)}] {cell.name}: {status.get('status')} in "
                 f"{fmt_duration(time.perf_counter() - start)}{detail}")
            rebuild_shared_files(root, summary_cells, summary_weights)
        else:
            if cell.kind == "train":
                train_follower(cell, context, cell_dir(root, cell.name))
            while read_status(cell_dir(root, cell.name)).get("status") not in ("done", "failed"):
                time.sleep(2.0)
    return failed, elsewhere


def _run_on_slurm(experiment: ExperimentConfig, pending, context, root: Path, cells,
                  wait: bool) -> tuple[list[str], list[str]] | None:
    """Submit `pending` cells to Slurm and (with `wait`) follow them to the end; returns
    (failed, left to other runners), or None when it returned right after submitting."""
    spec = experiment.runner.slurm
    weights = experiment.runner.summary_weights
    queued = slurm.still_queued(root, pending)
    for name, job in queued.items():
        _say(f"  {name}: still queued or running as Slurm job {job}; not resubmitted")
    submitted = slurm.submit([c for c in pending if c.name not in queued], context, root, spec,
                             cells, weights, job_name=f"harness-{experiment.name}")
    for job in submitted:
        _say(f"→ {job.cell}: Slurm job {job.job_id}, log {job.stdout}")
    if not wait:
        _say(f"{experiment.name}: {len(submitted)} cell(s) submitted; follow them with "
             f"`harness status {root}`, then build the report with `harness report {root}`")
        return None
    jobs = submitted + [slurm.submitted_from_record(name, slurm.read_launch(cell_dir(root, name)))
                        for name in queued]
    failed: list[str] = []
    elsewhere: list[str] = []
    ended = [0]

    def on_change(job: slurm.Submitted, state: str) -> None:
        _say(f"  {job.cell}: {state.lower()} (job {job.job_id})")

    def on_end(job: slurm.Submitted, status: dict | None) -> None:
        if status is None:
            elsewhere.append(job.cell)
            _say(f"  {job.cell}: running in another runner; skipped here")
            return
        ended[0] += 1
        if status.get("status") != "done":
            failed.append(job.cell)
        detail = (f": {status.get('error')}" if status.get("status") == "failed"
                  else _result_line(root, job.cell))
        _say(f"[{ended[0]}/{len(jobs)}] {job.cell}: {status.get('status')} "
             f"(job {job.job_id}){detail}")
        rebuild_shared_files(root, cells, weights)

    slurm.wait(root, jobs, spec.poll_s, on_change, on_end)
    return failed, elsewhere


def print_plan(experiment: ExperimentConfig, plan: Plan, cells: list[Cell], root: Path | None,
               statuses: dict[str, str]) -> None:
    by_name = {e.name: e for e in plan.cells}
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.family] = counts.get(cell.family, 0) + 1
    kinds = ", ".join(f"{n} {family}" for family, n in counts.items())
    data = experiment.data.dataset if experiment.data else "no dataset"
    _say(f"{experiment.name}: {len(cells)} cells ({kinds}) on {data}; "
         f"{plan.jobs} job(s) × {plan.threads} torch thread(s)")
    width = max(len(c.name) for c in cells)
    _say(f"  {'cell':<{width}}  {'kind':<5}  {'params':>11}  {'MFLOPs/img':>10}  "
         f"{'steps':>7}  {'memory':>9}  {'est.':>7}  status")
    for cell in cells:
        estimate = by_name[cell.name]
        flops = f"{estimate.flops_per_image / 1e6:,.1f}" if estimate.flops_per_image else ""
        params = f"{cell.params:,}" if cell.params else ""
        steps = f"{estimate.steps:,}" if estimate.steps else ""
        memory = fmt_bytes(estimate.peak_memory_bytes)
        _say(f"  {cell.name:<{width}}  {cell.kind:<5}  {params:>11}  {flops:>10}  {steps:>7}  "
             f"{memory:>9}  {fmt_duration(estimate.seconds):>7}  "
             f"{statuses.get(cell.name, 'pending')}")
        if cell.match:
            _say(f"  {'':<{width}}  matched: {cell.match['field']}={cell.match['value']} for "
                 f"{cell.match['target_params']:,} parameters")
    pending = [by_name[c.name].seconds for c in cells if statuses.get(c.name) != "done"]
    left = makespan(pending, plan.jobs)
    _say(f"estimated total: {fmt_duration(plan.total_s)} for all cells"
         + (f", {fmt_duration(left)} for the {len(pending)} not yet done" if len(pending)
            != len(cells) else "") + f" (from {plan.basis})")
    budget = experiment.runner.time_budget_min
    if budget is not None and plan.total_s > budget * 60:
        _say(f"warning: the estimate is over this experiment's stated budget of {budget:g} min "
             "(runner.time_budget_min); lower train.max_steps or raise jobs")
    if root is not None:
        _say(f"results: {root}/")


def _jobs_and_threads(experiment: ExperimentConfig, jobs: int | None) -> tuple[int, int]:
    # None (no --jobs given) means "as the experiment file says"; an explicit --jobs wins.
    chosen = experiment.runner.jobs if jobs is None else int(jobs)
    if chosen < 1:
        raise UserError(f"--jobs must be >= 1, got {chosen}")
    threads = experiment.runner.threads_per_job or max(1, available_cores() // chosen)
    return chosen, threads


def _gpu_slots(experiment: ExperimentConfig, jobs: int) -> list[tuple[int, ...]]:
    """The local device group of each parallel job ([] without GPUs), said in the plan."""
    runner = experiment.runner
    usable = gpus.usable_gpus(runner.gpus, torch.cuda.device_count())
    slots = gpus.device_slots(usable, jobs, runner.gpus_per_cell)
    if slots:
        _say(f"devices: {len(slots)} job(s), each on its own "
             + "; ".join(gpus.describe(s) for s in slots)
             + (f" under torchrun --nproc_per_node {runner.gpus_per_cell}"
                if runner.gpus_per_cell > 1 else "") + "; a cell takes the next free one")
    elif runner.gpus_per_cell > 1:
        _say("note: no GPU visible: runner.gpus_per_cell is ignored and cells run on the CPU")
    return slots


def _data_sizes(experiment: ExperimentConfig) -> tuple[int | None, int | None, int | None]:
    """(train images, test images, dims per image) the cells will use, or Nones."""
    data = experiment.data
    if data is None:
        return None, None, None
    try:
        splits = load_splits(data)
    except UserError as error:
        raise UserError(f"{experiment.path}: data: {error}") from None
    n_train = len(splits.train) if data.train_images is None else min(len(splits.train),
                                                                      data.train_images)
    n_test = len(splits.test) if data.test_images is None else min(len(splits.test),
                                                                   data.test_images)
    c, h, w = splits.image_shape
    return n_train, n_test, c * h * w


def _build_report(root: Path, explicit_results: bool) -> int:
    try:
        build_report(root, out_dir=root if explicit_results else None)  # prints where it went
    except UserError as error:
        print(f"harness: report failed: {error}", file=sys.stderr)
        return 1
    return 0


def run_experiment(path: Path, results_dir: Path | None = None,
                   overrides: list[str] | tuple[str, ...] = (), dry_run: bool = False,
                   jobs: int | None = None, launcher: str | None = None,
                   wait: bool = True) -> int:
    """Run (or with `dry_run` only plan) an experiment file; returns the exit status.

    `launcher` ("local" or "slurm"; None: the file's runner.launcher) says where cells run;
    `wait` False returns once Slurm has the cells."""
    experiment = load_experiment(Path(path), overrides=list(overrides or ()))
    launcher = launcher or experiment.runner.launcher
    if launcher not in ("local", "slurm"):
        raise UserError(f"--launcher must be 'local' or 'slurm', got {launcher!r}")
    if not wait and launcher != "slurm":
        raise UserError("--no-wait returns after submitting to Slurm: add --launcher slurm "
                        "(or runner.launcher: slurm); local cells run in this command")
    cells = list(experiment.cells)
    jobs, threads = _jobs_and_threads(experiment, jobs)
    info = distributed.env_info()
    if info.enabled:
        if jobs != 1:
            raise UserError(f"under torchrun ({info.world_size} processes) cells run one at a "
                            "time on all ranks; use --jobs 1")
        distributed.setup("cuda" if torch.cuda.is_available() else "cpu")
        if not info.is_main:
            global _say
            _say = lambda text: None  # noqa: E731 - only rank 0 talks
    root = Path(results_dir) if results_dir is not None else default_results_dir(experiment)
    context = CellContext(experiment=experiment.name, data=experiment.data,
                          sampling_speed=experiment.sampling_speed)
    for cell in cells:
        cell_dir(root, cell.name)  # every name stays inside the results folder
    statuses = {c.name: read_status(cell_dir(root, c.name)).get("status", "pending")
                for c in cells}
    try:
        n_train, n_test, dims = _data_sizes(experiment)
    except UserError as error:
        if not dry_run:
            raise
        _say(f"note: {error}; the plan assumes nothing about the data's size")
        n_train = n_test = dims = None
    if info.enabled and not info.is_main:
        _run_cells_distributed([], context, root, cells, experiment.runner.summary_weights, info)
        return 0
    # A cell whose checkpoint file or own dataset is missing is skipped, with where to get it.
    unavailable = missing_inputs(cells, experiment.data)
    runnable = [c for c in cells if c.name not in unavailable]
    if not runnable:
        for reason in list(unavailable.values())[1:]:
            _say(f"skipped: {reason}")
        first = next(iter(unavailable.values()))
        raise UserError(f"nothing to run: every cell lacks an input; {first}"
                        if len(unavailable) > 1 else first)
    check_checkpoints(runnable)  # a bad weights file: one line, exit 2, before any cell runs
    plan = make_plan(experiment, runnable, jobs, threads, n_train, n_test, dims)
    print_plan(experiment, plan, runnable, None if dry_run else root, statuses)
    for reason in unavailable.values():
        _say(f"skipped: {reason}")
    slots = (_gpu_slots(experiment, jobs) if launcher == "local" and not info.enabled else [])
    if dry_run:
        return 0
    check_resumable(root, runnable, context)

    root.mkdir(parents=True, exist_ok=True)
    for name, reason in unavailable.items():
        cell_dir(root, name).mkdir(parents=True, exist_ok=True)
        write_status(cell_dir(root, name), "skipped", error=reason)
    with locks.guard(root):
        atomic.write_text(root / "experiment.yaml", _yaml_text(experiment))
        atomic.write_json(root / "plan.json", {
            **plan.record(), "name": experiment.name, "source": str(experiment.path),
            "overrides": list(experiment.overrides), "smoke": experiment.smoke,
            "cells": [c.record() for c in cells]})
    estimates = {e.name: e.seconds for e in plan.cells}
    pending = [c for c in runnable if statuses[c.name] != "done"]
    pending.sort(key=lambda c: -estimates.get(c.name, 0.0))  # longest first: shortest makespan
    skipped = len(runnable) - len(pending)
    if skipped:
        _say(f"{skipped} cell(s) already done; skipped")
    start = time.perf_counter()
    summary_weights = experiment.runner.summary_weights
    if launcher == "slurm":
        if info.enabled:
            raise UserError("--launcher slurm submits jobs: run it once, not under torchrun")
        outcome = _run_on_slurm(experiment, pending, context, root, cells, wait)
        if outcome is None:
            return 0
        failed, elsewhere = outcome
    elif info.enabled:
        failed, elsewhere = _run_cells_distributed(pending, context, root, cells,
                                                   summary_weights, info)
    else:
        failed, elsewhere = _run_cells(pending, context, root, jobs, threads, plan, cells,
                                       summary_weights, slots)
    rebuild_shared_files(root, cells, summary_weights)
    _say(f"{experiment.name}: {len(pending) - len(failed) - len(elsewhere)} cell(s) run in "
         f"{fmt_duration(time.perf_counter() - start)}, {skipped} skipped"
         + (f" ({len(unavailable)} more for a missing input)" if unavailable else "")
         + f", {len(failed)} failed"
         + (f", {len(elsewhere)} handled by another runner" if elsewhere else "")
         + f"; {root}/summary.csv")
    for name in failed:
        _say(f"  failed: {name}: {read_status(cell_dir(root, name)).get('error')}")
    exit_status = 1 if failed else 0
    if experiment.runner.report:
        exit_status = max(exit_status, _build_report(root, results_dir is not None))
    return exit_status


def _yaml_text(experiment: ExperimentConfig) -> str:
    header = (f"# {experiment.path} as loaded"
              + (f", with --set {' --set '.join(experiment.overrides)}"
                 if experiment.overrides else "")
              + (" (smoke)" if experiment.smoke else "") + "\n")
    return header + yaml.safe_dump(experiment.record, sort_keys=False)


__all__ = ["run_experiment"]
