"""`harness status RESULTS_DIR`: every cell's state (pending, running, done, failed), its
sampling-speed measurement in the run's speed phase (queued, timing, timed, failed; `-` for a cell
without one), its Slurm job id and the last line of its log, from the results folder and, for
submitted cells, Slurm.

A cell whose Slurm job has ended without the cell writing done/failed (cancelled, killed) is
marked failed here, exactly as a waiting `harness run` would (harness.run.launchers.slurm), so a
`--no-wait` submission ends too; a re-run then resubmits it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError
from harness.run import locks
from harness.run.results_folder import read_speed, read_status
from harness.run.launchers import slurm
from harness.run.results_folder import cell_dir

STATES = ("pending", "running", "done", "failed")
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


def cell_states(root: Path) -> list[dict]:
    """One dict per cell: name, state (one of STATES), speed (one of SPEED_STATES), job id,
    Slurm state, last log line."""
    plan = _read_plan(root)
    names, timed = _cell_names(plan), _timed_cells(plan)
    launches = {name: slurm.read_launch(cell_dir(root, name)) for name in names}
    job_ids = sorted({str(r["job_id"]) for r in launches.values() if r.get("job_id")})
    try:
        live = slurm.job_states(job_ids) if job_ids else {}
    except UserError:  # no Slurm commands here (e.g. a copied results folder): files only
        live = None
    rows = []
    for name in names:
        status = read_status(cell_dir(root, name))
        launch = launches[name]
        job_id = str(launch["job_id"]) if launch.get("job_id") else None
        slurm_state = (live or {}).get(job_id) if job_id else None
        state = status.get("status") if status.get("status") in STATES else "pending"
        if (job_id and live is not None and slurm_state not in slurm.ACTIVE_STATES
                and state not in ("done", "failed")):
            settled = slurm.settle(root, slurm.submitted_from_record(name, launch), slurm_state)
            state = settled.get("status") if settled else "running"
        elif slurm_state == "RUNNING" and state == "pending":
            state = "running"
        # The cell's own output (training progress, errors) is on stderr; submitit's on stdout.
        last = (slurm.log_tail(launch.get("stderr"), lines=1, skip_prefix="submitit ")
                or slurm.log_tail(launch.get("stdout"), lines=1, skip_prefix="submitit "))
        rows.append({"cell": name, "state": state,
                     "speed": _speed_state(cell_dir(root, name), name in timed, state),
                     "job_id": job_id, "slurm_state": slurm_state, "last_log_line": last})
    return rows


def print_status(root: Path) -> int:
    """Print the table; exit status 0 when the run is complete (every cell done, every
    sampling-speed measurement taken), 1 otherwise."""
    rows = cell_states(Path(root))
    width = max([len(r["cell"]) for r in rows] + [4])
    print(f"{'cell':<{width}}  {'state':<7}  {'speed':<6}  {'job':<10}  last log line")
    for row in rows:
        job = row["job_id"] or "-"
        if row["slurm_state"] and row["slurm_state"] not in ("RUNNING", "COMPLETED"):
            job += f" ({row['slurm_state'].lower()})"
        line = row["last_log_line"]
        line = line if len(line) <= 100 else line[:97] + "..."
        print(f"{row['cell']:<{width}}  {row['state']:<7}  {row['speed']:<6}  {job:<10}  "
              f"{line}")
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    speeds = {s: sum(r["speed"] == s for r in rows) for s in SPEED_STATES[1:]}
    speed_line = ""
    if any(speeds.values()):
        speed_line = (f"; speed phase: {speeds['timed']} of {sum(speeds.values())} timed" +
                      "".join(f", {n} {s}" for s, n in speeds.items() if n and s != "timed"))
    print(f"{root}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + speed_line)
    complete = counts["done"] == len(rows) and speeds["queued"] == speeds["timing"] == \
        speeds["failed"] == 0
    return 0 if complete else 1
