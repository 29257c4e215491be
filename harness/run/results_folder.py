"""The results folder of one experiment (docs/results.md): where cells live, each cell's
status and row files, the check that a re-run resumes the same configs, and the shared files
rebuilt from the cells' own files.

`metrics.jsonl` and `summary.csv` are never appended to by several processes: they are rewritten
whole, atomically, from every cell's `metrics.jsonl` and `status.json`, under the folder's flock
(`harness.run.locks.guard`), so the last rebuild always reflects every finished cell.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import hashlib
from dataclasses import dataclass

from harness import atomic
from harness.contract import (CONFIG_FILE, ROWS_FILE, SPEED_FILE, STATUS_FILE, SUMMARY_COLUMNS,
                              summary_row)
from harness.errors import UserError
from harness.experiment.schema import Cell, DataSpec, ExperimentConfig, SpeedSpec
from harness.plain import to_plain
from harness.run import locks
from models import registry

# Inputs the run's cells share, computed once (e.g. train-set features): RESULTS/.cache/.
CACHE_DIR = ".cache"

# Config keys that may change between a run and its resumption without changing its results.
# The speed phase's stopping rule too: a change re-measures the speed (harness.run.speed_phase
# records the settings it measured with), never the cell.
_IGNORED_CONFIG_KEYS = {("train", "progress"), ("train", "num_threads"),
                        ("train", "log_every_steps"), ("train", "activation_checkpointing")} | {
    ("eval", key) for key in ("sample_spread_tolerance", "sample_window_rounds",
                              "sample_max_rounds", "sample_max_s")} | {
    ("sampling_speed", key) for key in ("spread_tolerance", "window_rounds", "max_rounds",
                                        "max_s")}


@dataclass(frozen=True)
class CellContext:
    """What a cell needs from its experiment (picklable: it travels to worker processes)."""

    experiment: str
    data: DataSpec | None
    sampling_speed: SpeedSpec | None

    @property
    def dataset(self) -> str:
        return self.data.dataset if self.data is not None else "none"


def cell_config_record(cell: Cell, context: CellContext) -> dict:
    label = registry.get(cell.family).label if cell.kind != "codec" else None
    return {"experiment": context.experiment, **cell.record(), "family_label": label,
            # speed cells record the file's data too, as results folders always have
            "data": to_plain(cell.data or context.data),
            "sampling_speed": to_plain(context.sampling_speed) if cell.kind == "speed" else None}


# --------------------------------------------------------------------------- status files


def read_status(cell_dir: Path) -> dict:
    """The cell's status.json; a "done" whose result rows no longer match the sha256 recorded
    with it (a file cut short or edited) reads as "damaged", so the cell is redone."""
    value = atomic.read_json_object(Path(cell_dir) / STATUS_FILE)
    expected = value.get("rows_sha256")
    if value.get("status") == "done" and expected is not None:
        try:
            actual = hashlib.sha256((Path(cell_dir) / ROWS_FILE).read_bytes()).hexdigest()
        except OSError:
            actual = None
        if actual != expected:
            return {**value, "status": "damaged",
                    "error": f"{ROWS_FILE} is missing or does not match its recorded sha256"}
    return value


def write_status(cell_dir: Path, status: str, error: str | None = None,
                 wall_s: float | None = None, **extra: Any) -> None:
    atomic.write_json(Path(cell_dir) / STATUS_FILE, {"status": status, "error": error,
                                                "wall_s": wall_s, **extra})


def read_rows(cell_dir: Path) -> list[dict]:
    path = Path(cell_dir) / ROWS_FILE
    if not path.is_file():
        return []
    try:
        return atomic.read_jsonl(path)
    except (OSError, ValueError):
        return []


def read_speed(cell_dir: Path) -> dict:
    """The cell's speed-phase record (sampling_speed.json); {} when absent or unreadable."""
    return atomic.read_json_object(Path(cell_dir) / SPEED_FILE)


def merged_rows(cell_dir: Path) -> list[dict]:
    """The cell's rows with its speed-phase rows: those replace any `sample_images_per_s` rows
    in metrics.jsonl (a folder from before the speed phase timed sampling inside the cell)."""
    rows = read_rows(cell_dir)
    speed = read_speed(cell_dir)
    if speed.get("status") != "done" or not isinstance(speed.get("rows"), list):
        return rows
    return [r for r in rows if r.get("metric") != "sample_images_per_s"] + \
        [r for r in speed["rows"] if isinstance(r, dict)]


# --------------------------------------------------------------------------- folders


def cell_dir(root: Path, name: str) -> Path:
    """`root/cells/<name>`, refusing any name that would leave the results folder."""
    base = (root / "cells").resolve()
    path = (base / name).resolve()
    if path.parent != base or name in ("", ".", ".."):
        raise UserError(f"cell name {name!r} would write outside {root}/cells; rename it")
    return root / "cells" / name


def default_results_dir(experiment: ExperimentConfig) -> Path:
    return Path("results") / experiment.name


def _config_difference(old: Any, new: Any, path: tuple = ()) -> str | None:
    if path[-2:] in _IGNORED_CONFIG_KEYS or path[-1:] == ("experiment",):
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _config_difference(old.get(key), new.get(key), path + (key,))
            if found:
                return found
        return None
    if old != new:
        return f"{'.'.join(map(str, path))}: {old!r} → {new!r}"
    return None


def check_resumable(root: Path, cells: list[Cell], context: CellContext) -> None:
    """Refuse to resume or skip a cell whose folder holds a run of a different config."""
    for cell in cells:
        path = cell_dir(root, cell.name) / CONFIG_FILE
        if not path.is_file():
            continue
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: the cell is re-run and the file rewritten
        new = json.loads(json.dumps(cell_config_record(cell, context), default=str))
        difference = _config_difference(old, new)
        if difference:
            raise UserError(f"{path.parent} holds a run with a different config ({difference}); "
                            f"pass --results DIR for a new run, or delete that folder to redo "
                            f"the cell")


# --------------------------------------------------------------------------- shared files


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in SUMMARY_COLUMNS})
    return buffer.getvalue()


# The results folder's own files, written (atomically) only under `locks.guard(root)`.
SHARED_FILES = frozenset({ROWS_FILE, "summary.csv", "plan.json", "experiment.yaml"})


def rebuild_shared_files(root: Path, cells: list[Cell], summary_weights: str) -> list[dict]:
    """Rewrite metrics.jsonl and summary.csv from the cells' own files (atomic, under flock):
    each done cell's metrics.jsonl with its speed-phase rows (sampling_speed.json)."""
    with locks.guard(root):
        # Written only under this guard: a temporary of these is a killed rebuild's.
        atomic.remove_temporaries(root, targets=SHARED_FILES)
        all_rows: list[dict] = []
        summary: list[dict] = []
        for cell in cells:
            directory = cell_dir(root, cell.name)
            status = read_status(directory)
            rows = merged_rows(directory) if status.get("status") == "done" else []
            all_rows += rows
            summary.append(summary_row(cell.contract_fields(), rows, status, summary_weights))
        atomic.write_text(root / ROWS_FILE,
                          "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                  for r in all_rows))
        atomic.write_text(root / "summary.csv", _csv_text(summary))  # one of SHARED_FILES
    return summary
