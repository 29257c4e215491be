"""`--launcher slurm` from the runner's side: submit the pending cells (harness.run.launchers.
slurm), then follow them to the end with one line per state change."""

from __future__ import annotations

from pathlib import Path

from harness.experiment.schema import ExperimentConfig
from harness.run.console import outcome, say
from harness.run.launchers import slurm
from harness.run.results_folder import cell_dir, rebuild_shared_files


def run_on_slurm(experiment: ExperimentConfig, pending, context, root: Path, cells,
                  wait: bool) -> tuple[list[str], list[str]] | None:
    """Submit `pending` cells to Slurm and (with `wait`) follow them to the end; returns
    (failed, left to other runners), or None when it returned right after submitting."""
    spec = experiment.runner.slurm
    weights = experiment.runner.summary_weights
    queued = slurm.still_queued(root, pending)
    for name, job in queued.items():
        say(f"  {name}: still queued or running as Slurm job {job}; not resubmitted")
    submitted = slurm.submit([c for c in pending if c.name not in queued], context, root, spec,
                             cells, weights, job_name=f"harness-{experiment.name}")
    for job in submitted:
        say(f"→ {job.cell}: Slurm job {job.job_id}, log {job.stdout}")
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
    return failed, elsewhere
