"""`--launcher slurm` from the runner's side: submit the pending cells (harness.run.launchers.
slurm), then follow them to the end with one line per state change."""

from __future__ import annotations

from pathlib import Path

from harness.experiment.schema import ExperimentConfig
from harness.run import speed_phase
from harness.run.results_folder import read_speed
from harness.run.console import outcome, say
from harness.run.launchers import slurm
from harness.run.results_folder import cell_dir, rebuild_shared_files


def _speed_job(experiment: ExperimentConfig, context, root: Path, cells, runnable,
               after: list[str], submitted_now: bool,
               cells_to_run: bool) -> slurm.Submitted | None:
    """The speed phase's job, when some measurement is pending (or will be, once the cells
    run): the one still queued when no cell was submitted now; otherwise a new one starting
    after `after` (the cells' jobs) and after the still-queued one, which may start before the
    new cells end and measure only the cells done by then."""
    todo = speed_phase.pending(runnable, context, root, assume_done=cells_to_run)
    if not todo:
        return None
    job = slurm.queued_speed_phase(root)
    if job is not None and not submitted_now:
        say(f"  speed phase: still queued or running as Slurm job {job.job_id}; not resubmitted")
        return job
    if job is not None:
        after = sorted(set(after) | {job.job_id})
    job = slurm.submit_speed_phase(runnable, context, root, experiment.runner.slurm, cells,
                                   experiment.runner.summary_weights,
                                   f"harness-{experiment.name}-speed", after)
    say(f"→ speed phase ({len(todo)} cell(s) to time): Slurm job {job.job_id}"
        + (" after the cells' jobs end" if after else "") + f", log {job.stdout}")
    return job


def run_on_slurm(experiment: ExperimentConfig, pending, context, root: Path, cells,
                  wait: bool, runnable=None) -> tuple[list[str], list[str], list[str]] | None:
    """Submit `pending` cells to Slurm and (with `wait`) follow them to the end, then the speed
    phase as one job that Slurm starts once the cells' jobs have ended (`runnable`: the cells it
    measures; default `cells`); returns (failed cells, cells left to other runners, cells whose
    speed measurement failed or was not taken), or None when it returned right after
    submitting."""
    spec = experiment.runner.slurm
    weights = experiment.runner.summary_weights
    runnable = list(cells if runnable is None else runnable)
    queued = slurm.still_queued(root, pending)
    for name, job in queued.items():
        say(f"  {name}: still queued or running as Slurm job {job}; not resubmitted")
    submitted = slurm.submit([c for c in pending if c.name not in queued], context, root, spec,
                             cells, weights, job_name=f"harness-{experiment.name}")
    for job in submitted:
        say(f"→ {job.cell}: Slurm job {job.job_id}, log {job.stdout}")
    after = sorted({job.job_id.split("_")[0] for job in submitted} | set(queued.values()))
    speed_job = _speed_job(experiment, context, root, cells, runnable, after, bool(submitted),
                           bool(submitted or queued))
    if not wait:
        say(f"{experiment.name}: {len(submitted)} cell(s) submitted; follow them with "
            f"`harness status {root}`, then build the report with `harness report {root}`")
        return None
    jobs = submitted + [slurm.submitted_from_record(name, slurm.read_launch(cell_dir(root, name)))
                        for name in queued]
    failed: list[str] = []
    elsewhere: list[str] = []
    ended = [0]

    def on_change(job: slurm.Submitted, state: str) -> None:
        say(f"  {job.cell}: {state.lower()} (job {job.job_id})")

    def on_end(job: slurm.Submitted, status: dict | None) -> None:
        if status is None:
            elsewhere.append(job.cell)
            say(f"  {job.cell}: running in another runner; skipped here")
            return
        ended[0] += 1
        if status.get("status") != "done":
            failed.append(job.cell)
        detail = outcome(root, job.cell, status)
        say(f"[{ended[0]}/{len(jobs)}] {job.cell}: {status.get('status')} "
            f"(job {job.job_id}){detail}")
        rebuild_shared_files(root, cells, weights)

    slurm.wait(root, jobs, spec.poll_s, on_change, on_end)
    speed_failed: list[str] = []
    if speed_job is not None:
        state = slurm.wait_for_job(speed_job.job_id, spec.poll_s)
        for cell in speed_phase.pending(runnable, context, root):
            speed_failed.append(cell.name)  # failed, or the job ended before measuring it
            error = read_speed(cell_dir(root, cell.name)).get("error") or (
                f"not measured: the speed-phase job {speed_job.job_id} ended "
                f"{(state or 'unlisted').lower()} first ({speed_job.stderr})")
            say(f"  {cell.name}: speed measurement: {error}")
        rebuild_shared_files(root, cells, weights)
    return failed, elsewhere, speed_failed
