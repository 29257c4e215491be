"""`harness status RESULTS_DIR`: every cell's state (pending, running, interrupted, done,
failed), its sampling-speed measurement in the run's speed phase (queued, timing, timed, failed;
`-` for a cell without one), its Slurm job id and the last line of its log, from the results
folder and, for submitted cells, Slurm.

`interrupted` is derived, never written: status.json says running but no live process holds the
cell's lock (Ctrl-C, SIGKILL, a lost machine); a re-run resumes it from its newest checkpoint.
The last log line is the tail of a Slurm job's log; a cell run on this machine has none, so
the line comes from its own files: its newest training row, its error, or its test figure.

A cell whose Slurm job has ended without the cell writing done/failed (cancelled, killed) is
marked failed here, exactly as a waiting `harness run` would (harness.run.launchers.slurm), so a
`--no-wait` submission ends too; a re-run then resubmits it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path

from harness.errors import UserError
from harness.run import locks
from harness.run.console import result_line
from harness.run.launchers.cell_task import read_launch
from harness.run.progress import fmt_duration
from harness.run.results_folder import cell_dir, read_speed, read_status

STATES = ("pending", "running", "interrupted", "done", "failed")
TRAIN_LOG = "train_log.jsonl"
SPEED_STATES = ("-", "queued", "timing", "timed", "failed")


def _read_plan(root: Path) -> dict:
    try:
        plan = json.loads((root / "plan.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root}/plan.json not found: is {root} a results folder written by "
                        "`harness run`?") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{root}/plan.json unreadable ({error}); re-run `harness run`") from None
    if not isinstance(plan, dict):
        raise UserError(f"{root}/plan.json is not a JSON object; re-run `harness run`")
    return plan


def _cell_names(plan: dict) -> list[str]:
    return [str(c["name"]) for c in plan.get("cells", []) if isinstance(c, dict) and "name" in c]


def _timed_cells(plan: dict) -> set[str]:
    """The cells the plan gives a sampling-speed measurement in the speed phase."""
    return {str(e["name"]) for e in plan.get("estimates", [])
            if isinstance(e, dict) and "name" in e and (e.get("speed_s") or 0) > 0}


def _speed_state(directory: Path, timed: bool, state: str) -> str:
    if not timed:
        return "-"
    record = read_speed(directory).get("status")
    if record == "done":
        return "timed"
    if record == "failed":
        return "failed"
    # The speed phase holds a done cell's lock while it times it.
    return "timing" if state == "done" and locks.held_elsewhere(directory) else "queued"


def _last_row(path: Path) -> dict:
    """The newest complete row of a JSONL log, reading only its end ({} when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode("utf-8", errors="replace").split("\n")[:-1]
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            return row
    return {}


def _number(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) \
        else "?"


def train_line(row: dict) -> str:
    """A train_log.jsonl row (docs/results.md) as one line, as the trainer printed it."""
    step = row.get("step", "?")
    if row.get("type") == "skip":
        return f"step {step}: update skipped ({row.get('reason', '?')})"
    if row.get("type") == "val":
        return (f"step {step}: {row.get('split', 'validation')} "
                f"{_number(row.get('bits_per_dim'), '.4f')} bits/dim ({row.get('weights')})")
    return (f"step {step} | epoch {_number(row.get('epoch'), '.3f')} | loss "
            f"{_number(row.get('loss_bits_per_dim'), '.4f')} bits/dim | "
            f"{_number(row.get('images_per_s'), '.1f')} images/s")


def newest_checkpoint_step(directory: Path) -> int | None:
    steps = [int(m.group(1)) for p in (directory / "checkpoints").glob("step-*.pt")
             if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
    return max(steps) if steps else None


def own_log_line(root: Path, name: str, state: str, status: dict) -> str:
    """The last line of a cell run on this machine, from its files."""
    directory = cell_dir(root, name)
    if state == "failed" or status.get("status") == "skipped":
        return str(status.get("error") or "")
    if state == "done":
        wall = status.get("wall_s")
        took = f" in {fmt_duration(wall)}" if isinstance(wall, (int, float)) else ""
        return f"done{took}{result_line(root, name)}"
    row = _last_row(directory / TRAIN_LOG)
    line = train_line(row) if row else ""
    if state == "interrupted":
        step = newest_checkpoint_step(directory)
        resume = (f"a re-run resumes it from step {step}" if step is not None else
                  "a re-run starts it again (no checkpoint yet)")
        return f"{line}; {resume}" if line else resume
    return line


def _state(status: dict, directory: Path, slurm_active: bool) -> str:
    """One of STATES; `running` with no live holder of the cell's lock reads `interrupted`."""
    state = status.get("status") if status.get("status") in STATES else "pending"
    if state == "running" and not slurm_active and not locks.held_elsewhere(directory):
        return "interrupted"
    return state


def cell_states(root: Path) -> list[dict]:
    """One dict per cell: name, state (one of STATES), speed (one of SPEED_STATES), job id,
    Slurm state, last log line."""
    plan = _read_plan(root)
    names, timed = _cell_names(plan), _timed_cells(plan)
    launches = {name: read_launch(cell_dir(root, name)) for name in names}
    job_ids = sorted({str(r["job_id"]) for r in launches.values() if r.get("job_id")})
    slurm = live = None
    if job_ids:  # a submitted run; a local one needs neither Slurm nor submitit
        from harness.run.launchers import slurm  # here: only submitted runs need submitit

        try:
            live = slurm.job_states(job_ids)
        except UserError:  # no Slurm commands here (e.g. a copied results folder): files only
            live = None
    rows = []
    for name in names:
        status = read_status(cell_dir(root, name))
        launch = launches[name]
        job_id = str(launch["job_id"]) if launch.get("job_id") else None
        slurm_state = (live or {}).get(job_id) if job_id else None
        active = slurm is not None and slurm_state in slurm.ACTIVE_STATES
        state = _state(status, cell_dir(root, name), active)
        last = ""
        if job_id and slurm is not None:
            if (live is not None and slurm_state not in slurm.ACTIVE_STATES
                    and state not in ("done", "failed")):
                settled = slurm.settle(root, slurm.submitted_from_record(name, launch),
                                       slurm_state)
                state = settled.get("status") if settled else "running"
            elif slurm_state == "RUNNING" and state == "pending":
                state = "running"
            # The cell's own output (progress, errors) is on stderr; submitit's on stdout.
            last = (slurm.log_tail(launch.get("stderr"), lines=1, skip_prefix="submitit ")
                    or slurm.log_tail(launch.get("stdout"), lines=1, skip_prefix="submitit "))
        last = last or own_log_line(root, name, state, status)
        rows.append({"cell": name, "state": state,
                     "speed": _speed_state(cell_dir(root, name), name in timed, state),
                     "job_id": job_id, "slurm_state": slurm_state, "last_log_line": last})
    return rows


def rerun_command(root: Path) -> str:
    """The command that resumes the run of `root`, from what its plan.json recorded."""
    plan = _read_plan(root)
    source = plan.get("source")
    overrides = [o for o in plan.get("overrides") or [] if isinstance(o, str)]
    if not isinstance(source, str) or not Path(source).is_file():
        return f"the command that started it, with --results {shlex.quote(str(root))}"
    words = ["harness", "run", source, "--results", str(root)]
    words += [word for o in overrides for word in ("--set", o)]
    return " ".join(shlex.quote(word) for word in words)


def print_status(root: Path) -> int:
    """Print the table; exit status 0 when the run is complete (every cell done, every
    sampling-speed measurement taken), 1 otherwise."""
    rows = cell_states(Path(root))
    width = max([len(r["cell"]) for r in rows] + [4])
    state_width = max([len(r["state"]) for r in rows] + [5])
    print(f"{'cell':<{width}}  {'state':<{state_width}}  {'speed':<6}  {'job':<10}  "
          "last log line")
    for row in rows:
        job = row["job_id"] or "-"
        if row["slurm_state"] and row["slurm_state"] not in ("RUNNING", "COMPLETED"):
            job += f" ({row['slurm_state'].lower()})"
        line = row["last_log_line"]
        line = line if len(line) <= 100 else line[:97] + "..."
        print(f"{row['cell']:<{width}}  {row['state']:<{state_width}}  {row['speed']:<6}  "
              f"{job:<10}  {line}")
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    speeds = {s: sum(r["speed"] == s for r in rows) for s in SPEED_STATES[1:]}
    speed_line = ""
    if any(speeds.values()):
        speed_line = (f"; speed phase: {speeds['timed']} of {sum(speeds.values())} timed" +
                      "".join(f", {n} {s}" for s, n in speeds.items() if n and s != "timed"))
    print(f"{root}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + speed_line)
    if counts["interrupted"]:
        print(f"{counts['interrupted']} cell(s) interrupted (no live runner holds them): a "
              f"re-run resumes them from their newest checkpoints: {rerun_command(root)}")
    complete = counts["done"] == len(rows) and speeds["queued"] == speeds["timing"] == \
        speeds["failed"] == 0
    return 0 if complete else 1
