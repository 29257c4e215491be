"""`harness run FILE --launcher slurm`: every pending cell as one task of one Slurm job array,
submitted through submitit, into the same results folder (a filesystem the nodes share).

* At submission each cell gets `cells/<cell>/slurm.json` (job id, stdout/stderr paths); the job
  adds its id and log path to the cell's status.json when it ends (harness.run.launchers.slurm_job).
* Job states come from `squeue --states=all` (then `scontrol show job`), never from submitit's
  `job.state`/`result()`: those ask `sacct`, which fails on a cluster without accounting and then
  never reports a cancelled or crashed job as ended. A job that has left Slurm's queue without
  its cell writing "done" or "failed" (cancelled, killed, out of memory, node failure) marks the
  cell failed with the tail of its log; the other cells go on.
* A re-run submits only cells that are neither done nor still queued or running in Slurm; cell
  locks keep two submissions from running one cell twice (the second job finds it held or done).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

import harness
from harness import atomic
from harness.errors import UserError
from harness.experiment.schema import Cell, SlurmSpec
from harness.run import locks
from harness.run.results_folder import CellContext, read_status, write_status
from harness.run.launchers.slurm_job import (
    LAUNCH_FILE,
    CellJob,
    SpeedPhaseJob,
    read_launch,
)
from harness.run.results_folder import cell_dir

# Slurm states of a job still in the queue or on a node (squeue's long names).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
                           "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class Submitted:
    cell: str
    job_id: str
    stdout: str
    stderr: str


# --------------------------------------------------------------------------- asking Slurm


def _slurm_command(args: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise UserError(f"'{args[0]}' not found: --launcher slurm needs the Slurm client "
                        "commands on PATH (run on a cluster login node)") from None


def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: Slurm state} for the jobs Slurm still knows; None when squeue did not answer.

    Array tasks are named `<array id>_<task>`; a job missing from the answer has left the
    queue (ended longer ago than the cluster's MinJobAge) or never existed.
    """
    if not job_ids:
        return {}
    arrays = sorted({job.split("_")[0] for job in job_ids})
    answer = _slurm_command(["squeue", "--array", "--states=all", "--noheader",
                             "--format=%i|%T", "--jobs", ",".join(arrays)])
    if answer.returncode != 0:
        if "Invalid job id" in answer.stderr:  # every job asked for has been purged
            return {}
        return None
    states: dict[str, str] = {}
    for line in answer.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state:
            states[job] = state.strip()
    for job in job_ids:  # squeue can drop a task that is between states: ask it directly
        if job not in states:
            shown = _slurm_command(["scontrol", "show", "job", job])
            for word in shown.stdout.split() if shown.returncode == 0 else []:
                if word.startswith("JobState="):
                    states[job] = word.split("=", 1)[1]
    return states


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES, skip_prefix: str | None = None) -> str:
    """The last non-empty lines of a job's log, joined by ' | ' ('' when there is none);
    `skip_prefix` leaves out lines that start with it (submitit's own bookkeeping)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()
            and not (skip_prefix and line.startswith(skip_prefix))]
    return " | ".join(kept[-lines:])


# --------------------------------------------------------------------------- submitting


def _executor(root: Path, spec: SlurmSpec, job_name: str) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=root / "slurm" / "%j")
    tasks = max(1, spec.gpus_per_cell)
    code_root = Path(harness.__file__).resolve().parents[1]
    parameters = {
        "job_name": job_name,
        "time": spec.time_min,
        "ntasks_per_node": tasks,
        "cpus_per_task": spec.cpus_per_cell,
        # The job imports the very code this runner runs, whatever the node's default path.
        "setup": [f"export PYTHONPATH={code_root}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "additional_parameters": dict(spec.additional),
    }
    if spec.gpus_per_cell:
        parameters["gpus_per_node"] = spec.gpus_per_cell
    if spec.partition:
        parameters["partition"] = spec.partition
    if spec.mem_gb is not None:
        parameters["mem"] = f"{int(spec.mem_gb * 1024)}M"
    if spec.account:
        parameters["account"] = spec.account
    if spec.qos:
        parameters["qos"] = spec.qos
    if spec.array_parallelism is not None:
        parameters["array_parallelism"] = spec.array_parallelism
    executor.update_parameters(**parameters)
    return executor


def still_queued(root: Path, cells: list[Cell]) -> dict[str, str]:
    """{cell: job id} of cells whose last submitted job Slurm still queues or runs."""
    launched = {c.name: read_launch(cell_dir(root, c.name)).get("job_id") for c in cells}
    launched = {name: job for name, job in launched.items() if job}
    states = job_states(sorted(set(launched.values()))) or {}
    return {name: job for name, job in launched.items() if states.get(job) in ACTIVE_STATES}


def submit(cells: list[Cell], context: CellContext, root: Path, spec: SlurmSpec,
           all_cells: list[Cell], summary_weights: str, job_name: str) -> list[Submitted]:
    """Submit `cells` as one job array; record each job in its cell's folder."""
    if not cells:
        return []
    root = root.resolve()
    executor = _executor(root, spec, job_name)
    job = CellJob(context=context, root=str(root), cells=tuple(all_cells),
                  summary_weights=summary_weights)
    try:
        jobs = executor.map_array(job, cells)
    except submitit.core.utils.FailedJobError as error:
        raise UserError(f"sbatch refused the job array: {str(error).strip().splitlines()[-1]}; "
                        "check runner.slurm (partition, account, qos, time_min)") from None
    submitted = []
    for cell, handle in zip(cells, jobs):
        directory = cell_dir(root, cell.name)
        directory.mkdir(parents=True, exist_ok=True)
        record = Submitted(cell.name, str(handle.job_id), str(handle.paths.stdout),
                           str(handle.paths.stderr))
        atomic.write_json(directory / LAUNCH_FILE, {
            "launcher": "slurm", "job_id": record.job_id, "stdout": record.stdout,
            "stderr": record.stderr, "submitted_at": time.time()})
        if read_status(directory).get("status") == "failed":  # resubmitted: not failed any more
            write_status(directory, "pending", wall_s=read_status(directory).get("wall_s"),
                         slurm_job_id=record.job_id)
        submitted.append(record)
    return submitted


SPEED_LAUNCH_FILE = "speed_phase_slurm.json"  # RESULTS/: the speed phase's job, at submission


def submit_speed_phase(cells: list[Cell], context: CellContext, root: Path, spec: SlurmSpec,
                       all_cells: list[Cell], summary_weights: str, job_name: str,
                       after: list[str]) -> Submitted:
    """Submit the speed phase (harness.run.speed_phase) as one single-task job that starts once
    every job in `after` has ended (`--dependency=afterany`); record it in the results folder."""
    root = root.resolve()
    one_task = dataclasses.replace(spec, gpus_per_cell=min(1, spec.gpus_per_cell),
                                   array_parallelism=None)
    executor = _executor(root, one_task, job_name)
    if after:
        executor.update_parameters(additional_parameters={
            **dict(spec.additional), "dependency": "afterany:" + ":".join(after)})
    job = SpeedPhaseJob(context=context, root=str(root), cells=tuple(cells),
                        summary_cells=tuple(all_cells), summary_weights=summary_weights)
    try:
        handle = executor.submit(job)
    except submitit.core.utils.FailedJobError as error:
        raise UserError(f"sbatch refused the speed-phase job: "
                        f"{str(error).strip().splitlines()[-1]}; check runner.slurm") from None
    record = Submitted("speed phase", str(handle.job_id), str(handle.paths.stdout),
                       str(handle.paths.stderr))
    atomic.write_json(root / SPEED_LAUNCH_FILE, {
        "launcher": "slurm", "job_id": record.job_id, "stdout": record.stdout,
        "stderr": record.stderr, "submitted_at": time.time(), "after": list(after)})
    return record


def queued_speed_phase(root: Path) -> Submitted | None:
    """The speed phase's last submitted job when Slurm still queues or runs it."""
    record = atomic.read_json_object(Path(root) / SPEED_LAUNCH_FILE)
    if not record.get("job_id"):
        return None
    states = job_states([str(record["job_id"])]) or {}
    if states.get(str(record["job_id"])) not in ACTIVE_STATES:
        return None
    return submitted_from_record("speed phase", record)


def wait_for_job(job_id: str, poll_s: float) -> str | None:
    """Poll Slurm until the job has left the queue or its active states; returns its last state
    seen (None when Slurm never listed it)."""
    last, silent_polls = None, 0
    while True:
        states = job_states([job_id])
        if states is None:  # squeue did not answer this time
            silent_polls += 1
            if silent_polls * poll_s > 600:
                raise UserError("squeue has not answered for 10 minutes; the speed-phase job "
                                f"{job_id} goes on: build the report with `harness report` later")
        else:
            silent_polls = 0
            state = states.get(job_id)
            if state not in ACTIVE_STATES:
                return state or last
            last = state
        time.sleep(poll_s)


# --------------------------------------------------------------------------- waiting


def settle(root: Path, job: Submitted, state: str | None) -> dict | None:
    """The final status of a cell whose job has ended (`state`: its last Slurm state, None when
    Slurm no longer lists it); None when another runner holds the cell. A job that ended
    without its cell writing done/failed marks the cell failed with the tail of its log."""
    directory = cell_dir(root, job.cell)
    status = read_status(directory)
    if status.get("status") in ("done", "failed"):
        return status
    if locks.held_elsewhere(cell_dir(root, job.cell)):
        return None
    tail = log_tail(job.stderr) or log_tail(job.stdout)
    # Slurm forgets a pending array task the moment it is cancelled: no state to name then.
    ended = (f"ended {state}" if state else "left Slurm's queue (cancelled while pending, or "
             "ended longer ago than MinJobAge)")
    error = (f"Slurm job {job.job_id} {ended} before the cell finished"
             + (f"; log: {tail}" if tail else "") + f" ({job.stderr})")
    status = {"status": "failed", "error": error, "wall_s": status.get("wall_s"),
              "slurm_job_id": job.job_id, "log": job.stdout}
    write_status(directory, **status)
    return status


def wait(root: Path, jobs: list[Submitted], poll_s: float,
         on_change: Callable[[Submitted, str], None],
         on_end: Callable[[Submitted, dict | None], None]) -> None:
    """Poll Slurm until every job has ended; `on_change(job, state)` on each state change,
    `on_end(job, status)` once per cell (status None: the cell is held by another runner)."""
    remaining = {job.job_id: job for job in jobs}
    shown: dict[str, str] = {}
    silent_polls = 0
    while remaining:
        states = job_states(list(remaining))
        if states is None:
            silent_polls += 1
            if silent_polls * poll_s > 600:
                raise UserError("squeue has not answered for 10 minutes; the jobs go on: "
                                f"see `harness status {root}` later")
            time.sleep(poll_s)
            continue
        silent_polls = 0
        for job_id, job in list(remaining.items()):
            state = states.get(job_id)
            if state in ACTIVE_STATES:
                if shown.get(job_id) != state:
                    shown[job_id] = state
                    on_change(job, state)
                continue
            del remaining[job_id]
            on_end(job, settle(root, job, state or shown.get(job_id)))
        if remaining:
            time.sleep(poll_s)


def submitted_from_record(name: str, record: dict) -> Submitted:
    return Submitted(name, str(record["job_id"]), str(record.get("stdout", "")),
                     str(record.get("stderr", "")))


__all__ = ["ACTIVE_STATES", "Submitted", "job_states", "log_tail", "queued_speed_phase", "settle",
           "still_queued", "submit", "submit_speed_phase", "submitted_from_record", "wait",
           "wait_for_job"]
