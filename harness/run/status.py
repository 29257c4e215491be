"""`harness status RESULTS_DIR`: every cell's state (pending, running, done, failed), its Slurm
job id and the last line of its log, from the results folder and, for submitted cells, Slurm.

A cell whose Slurm job has ended without the cell writing done/failed (cancelled, killed) is
marked failed here, exactly as a waiting `harness run` would (harness.run.launchers.slurm), so a
`--no-wait` submission ends too; a re-run then resubmits it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import UserError
from harness.run.cell import read_status
from harness.run.launchers import slurm
from harness.run.results_folder import cell_dir

STATES = ("pending", "running", "done", "failed")


def _cell_names(root: Path) -> list[str]:
    try:
        plan = json.loads((root / "plan.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root}/plan.json not found: is {root} a results folder written by "
                        "`harness run`?") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{root}/plan.json unreadable ({error}); re-run `harness run`") from None
    return [str(c["name"]) for c in plan.get("cells", []) if isinstance(c, dict) and "name" in c]


def cell_states(root: Path) -> list[dict]:
    """One dict per cell: name, state (one of STATES), job id, Slurm state, last log line."""
    names = _cell_names(root)
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
        rows.append({"cell": name, "state": state, "job_id": job_id, "slurm_state": slurm_state,
                     "last_log_line": last})
    return rows


def print_status(root: Path) -> int:
    """Print the table; exit status 0 when every cell is done, 1 otherwise."""
    rows = cell_states(Path(root))
    width = max([len(r["cell"]) for r in rows] + [4])
    print(f"{'cell':<{width}}  {'state':<7}  {'job':<10}  last log line")
    for row in rows:
        job = row["job_id"] or "-"
        if row["slurm_state"] and row["slurm_state"] not in ("RUNNING", "COMPLETED"):
            job += f" ({row['slurm_state'].lower()})"
        line = row["last_log_line"]
        line = line if len(line) <= 100 else line[:97] + "..."
        print(f"{row['cell']:<{width}}  {row['state']:<7}  {job:<10}  {line}")
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    print(f"{root}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0 if counts["done"] == len(rows) else 1
