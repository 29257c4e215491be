"""`harness run FILE`: expand an experiment into cells, print the plan, run the cells, write the
results folder of docs/results.md and build the report.

* Completed cells are skipped; interrupted ones resume (the trainer restarts from the newest
  checkpoint in the cell's folder); failed ones are retried. A failing cell is recorded
  (status.json, summary row) and the others go on; the exit status is 1 if any cell failed.
* `jobs` > 1 runs cells in that many spawned processes, each with `cores // jobs` torch threads
  (or `runner.threads_per_job`), longest cells first.
* `--launcher slurm` (or `runner.launcher: slurm`) submits the pending cells as one Slurm job array
  through submitit instead (harness.run.launchers.slurm) and, unless `--no-wait`, follows them.
* Then the speed phase (harness.run.speed_phase): every sampling-speed measurement, after all
  cells have ended, one at a time with nothing else running (in this process; under Slurm as
  one job that waits for the array), resumable per cell.
* Two runners on one results folder never run a cell twice: the process that runs a cell holds
  its lock (`harness.run.locks`); the shared files (`metrics.jsonl`, `summary.csv`) are rebuilt from
  the cells' own files, atomically, under an flock.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch
import yaml

from harness import atomic
from harness.data.download import no_downloads
from harness.engine import distributed
from harness.errors import UserError
from harness.experiment.load import load_experiment
from harness.experiment.schema import Cell, ExperimentConfig
from harness.report import build_report
from harness.run import locks, ranks, speed_phase
from harness.run.cell import check_checkpoints, load_splits, missing_inputs
from harness.run.console import quiet, say
from harness.run.launchers import gpus, local
from harness.run.plan import Plan, fmt_bytes, make_plan, makespan
from harness.run.progress import fmt_duration
from harness.run.provenance import available_cores
from harness.run.results_folder import (CellContext, cell_dir, check_resumable,
                                        default_results_dir, read_speed, read_status,
                                        rebuild_shared_files, write_status)


def print_plan(experiment: ExperimentConfig, plan: Plan, cells: list[Cell], root: Path | None,
               statuses: dict[str, str], speed_pending: list[str] | None = None) -> None:
    """The plan table; `speed_pending`: the cells whose sampling speed the speed phase will
    measure (None: every cell with a measurement)."""
    by_name = {e.name: e for e in plan.cells}
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.family] = counts.get(cell.family, 0) + 1
    kinds = ", ".join(f"{n} {family}" for family, n in counts.items())
    data = experiment.data.dataset if experiment.data else "no dataset"
    say(f"{experiment.name}: {len(cells)} cells ({kinds}) on {data}; "
        f"{plan.jobs} job(s) × {plan.threads} torch thread(s)")
    width = max(len(c.name) for c in cells)
    say(f"  {'cell':<{width}}  {'kind':<5}  {'params':>11}  {'MFLOPs/img':>10}  "
        f"{'steps':>7}  {'memory':>9}  {'est.':>7}  status")
    for cell in cells:
        estimate = by_name[cell.name]
        flops = f"{estimate.flops_per_image / 1e6:,.1f}" if estimate.flops_per_image else ""
        params = f"{cell.params:,}" if cell.params else ""
        steps = f"{estimate.steps:,}" if estimate.steps else ""
        memory = fmt_bytes(estimate.peak_memory_bytes)
        kind = "eval" if cell.kind == "train" and cell.train.max_steps == 0 else cell.kind
        say(f"  {cell.name:<{width}}  {kind:<5}  {params:>11}  {flops:>10}  {steps:>7}  "
            f"{memory:>9}  {fmt_duration(estimate.seconds):>7}  "
            f"{statuses.get(cell.name, 'pending')}")
        if estimate.phases:
            say(f"  {'':<{width}}  " + " · ".join(
                f"{name} {fmt_duration(seconds)}" for name, seconds in estimate.phases.items()
                if seconds >= 0.5 or name == "train"))
        if cell.match:
            say(f"  {'':<{width}}  matched: {cell.match['field']}={cell.match['value']} for "
                f"{cell.match['target_params']:,} parameters")
    timed = [c.name for c in cells if by_name[c.name].speed_s > 0 or c.kind == "speed"]
    to_time = timed if speed_pending is None else [n for n in timed if n in speed_pending]
    if timed:
        say(f"speed phase: sampling speed of {len(to_time)} cell(s) after every cell has "
            "finished, one at a time with nothing else running, rounds until they agree (est "
            f"{fmt_duration(sum(by_name[n].speed_s for n in to_time))})"
            + (f"; {len(timed) - len(to_time)} already measured" if len(to_time) != len(timed)
               else ""))
    pending = [by_name[c.name].seconds for c in cells if statuses.get(c.name) != "done"]
    left = makespan(pending, plan.jobs) + sum(by_name[n].speed_s for n in to_time)
    say(f"estimated total: {fmt_duration(plan.total_s)} for all cells and the speed phase"
        + (f", {fmt_duration(left)} for what is not yet done" if len(pending)
            != len(cells) or len(to_time) != len(timed) else "") + f" (from {plan.basis})")
    budget = experiment.runner.time_budget_min
    if budget is not None and plan.total_s > budget * 60:
        say(f"warning: the estimate is over this experiment's stated budget of {budget:g} min "
            "(runner.time_budget_min); lower train.max_steps or raise jobs")
    if root is not None:
        say(f"results: {root}/")


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
        say(f"devices: {len(slots)} job(s), each on its own "
            + "; ".join(gpus.describe(s) for s in slots)
            + (f" under torchrun --nproc_per_node {runner.gpus_per_cell}"
                if runner.gpus_per_cell > 1 else "") + "; a cell takes the next free one")
    elif runner.gpus_per_cell > 1:
        say("note: no GPU visible: runner.gpus_per_cell is ignored and cells run on the CPU")
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
    n_train = _used_images(data, "train", data.train_images, len(splits.train))
    n_test = _used_images(data, "test", data.test_images, len(splits.test))
    _used_images(data, "validation", data.validation_images, len(splits.validation))
    c, h, w = splits.image_shape
    return n_train, n_test, c * h * w


def _used_images(data, split: str, asked: int | None, available: int) -> int:
    """How many images of a split the cells use; asking for more than it has says so."""
    if asked is None or asked <= available:
        return available if asked is None else asked
    say(f"note: data.{split}_images is {asked:,} but {data.dataset}'s {split} split has "
        f"{available:,} images: all {available:,} are used")
    return available


def _check_batch_sizes(experiment: ExperimentConfig, cells: list[Cell],
                       n_train: int | None) -> None:
    """A training batch larger than the training set: refused before anything runs."""
    for cell in cells:
        if (cell.kind == "train" and n_train is not None and cell.data == experiment.data
                and cell.train.max_steps != 0 and cell.train.batch_size > n_train):
            raise UserError(f"cell {cell.name}: train.batch_size ({cell.train.batch_size:,}) "
                            f"exceeds the {n_train:,} training images; lower it (or raise "
                            "data.train_images)")


def _build_report(root: Path) -> int:
    try:
        build_report(root)  # beside its results; prints where it went
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
        distributed.setup(ranks.device_type(cells))  # by train.device, not by CUDA's presence
        if not info.is_main:
            quiet()  # only rank 0 talks
    root = Path(results_dir) if results_dir is not None else default_results_dir(experiment)
    if results_dir is not None:
        atomic.check_output_folder(root, "--results")
    else:
        atomic.check_output_folder(root, "results folder", "move that file or pass --results DIR")
    context = CellContext(experiment=experiment.name, data=experiment.data,
                          sampling_speed=experiment.sampling_speed)
    for cell in cells:
        cell_dir(root, cell.name)  # every name stays inside the results folder
    statuses = {c.name: read_status(cell_dir(root, c.name)).get("status", "pending")
                for c in cells}
    # A dry run plans from the files already here: it never starts a dataset download.
    with no_downloads() if dry_run else contextlib.nullcontext():
        try:
            n_train, n_test, dims = _data_sizes(experiment)
        except UserError as error:
            if not dry_run:
                raise
            say(f"note: {error}; a real run downloads what it can first; the plan assumes "
                "nothing about the data's size")
            n_train = n_test = dims = None
    if info.enabled and not info.is_main:
        local.run_cells_distributed([], context, root, cells,
                                    experiment.runner.summary_weights, info)
        return 0
    # A cell whose checkpoint file or own dataset is missing is skipped, with where to get it.
    with no_downloads() if dry_run else contextlib.nullcontext():
        unavailable = missing_inputs(cells, experiment.data)
    runnable = [c for c in cells if c.name not in unavailable]
    if not runnable:
        for reason in list(unavailable.values())[1:]:
            say(f"skipped: {reason}")
        first = next(iter(unavailable.values()))
        raise UserError(f"nothing to run: every cell lacks an input; {first}"
                        if len(unavailable) > 1 else first)
    check_checkpoints(runnable)  # a bad weights file: one line, exit 2, before any cell runs
    _check_batch_sizes(experiment, runnable, n_train)
    plan = make_plan(experiment, runnable, jobs, threads, n_train, n_test, dims)
    speed_pending = [c.name for c in runnable if speed_phase.measures_speed(c, context)
                     and not speed_phase.measured(c, context, root)]
    print_plan(experiment, plan, runnable, None if dry_run else root, statuses, speed_pending)
    for reason in unavailable.values():
        say(f"skipped: {reason}")
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
        say(f"{skipped} cell(s) already done; skipped")
    start = time.perf_counter()
    summary_weights = experiment.runner.summary_weights
    if launcher == "slurm":
        if info.enabled:
            raise UserError("--launcher slurm submits jobs: run it once, not under torchrun")
        # Here, not at the top: submitit is needed only to submit, and a machine without it
        # (a GPU box running the local launcher) still runs everything else.
        from harness.run.launchers import slurm_follow

        followed = slurm_follow.run_on_slurm(experiment, pending, context, root, cells, wait,
                                             runnable)
        if followed is None:
            return 0
        failed, elsewhere, speed_failed = followed
    else:
        if info.enabled:
            failed, elsewhere = local.run_cells_distributed(pending, context, root, cells,
                                                            summary_weights, info)
        else:
            failed, elsewhere = local.run_cells(pending, context, root, jobs, threads, plan,
                                                cells, summary_weights, slots)
        # Every cell has ended: the sampling speeds, alone on the machine (rank 0 only).
        speed_failed = speed_phase.run_speed_phase(root, runnable, context, threads, cells,
                                                   summary_weights)
    rebuild_shared_files(root, cells, summary_weights)
    say(f"{experiment.name}: {len(pending) - len(failed) - len(elsewhere)} cell(s) run in "
        f"{fmt_duration(time.perf_counter() - start)}, {skipped} skipped"
        + (f" ({len(unavailable)} more for a missing input)" if unavailable else "")
        + f", {len(failed)} failed"
        + (f", {len(elsewhere)} handled by another runner" if elsewhere else "")
        + f"; {root}/summary.csv")
    for name in failed:
        say(f"  failed: {name}: {read_status(cell_dir(root, name)).get('error')}")
    for name in speed_failed:
        say(f"  speed measurement failed: {name}: "
            f"{read_speed(cell_dir(root, name)).get('error') or 'not measured'}")
    exit_status = 1 if failed or speed_failed else 0
    if experiment.runner.report:
        exit_status = max(exit_status, _build_report(root))
    return exit_status


def _yaml_text(experiment: ExperimentConfig) -> str:
    header = (f"# {experiment.path} as loaded"
              + (f", with --set {' --set '.join(experiment.overrides)}"
                 if experiment.overrides else "")
              + (" (smoke)" if experiment.smoke else "") + "\n")
    return header + yaml.safe_dump(experiment.record, sort_keys=False)


__all__ = ["run_experiment"]
