"""The results folder of one experiment (docs/results.md): where cells live, the check that a
re-run resumes the same configs, and the shared files rebuilt from the cells' own files.

`metrics.jsonl` and `summary.csv` are never appended to by several processes: they are rewritten
whole, atomically, from every cell's `metrics.jsonl` and `status.json`, under the folder's flock
(`harness.locks.guard`), so the last rebuild always reflects every finished cell.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from harness import atomic, locks
from harness.cells import CellContext, read_rows, read_status
from harness.errors import UserError

SUMMARY_COLUMNS = (
    "cell", "model", "dataset", "effective_depth", "seed", "params", "test_bits_per_dim",
    "test_bits_per_dim_ci95", "weights", "test_bits_per_dim_ema", "iw_bits_per_dim", "iw_k",
    "train_images_per_s", "sample_images_per_s", "sample_images_per_s_cached",
    "flops_per_image", "steps", "wall_s", "status", "error",
)
# Config keys that may change between a run and its resumption without changing its results.
_IGNORED_CONFIG_KEYS = {("train", "progress"), ("train", "num_threads"),
                        ("train", "log_every_steps")}


# --------------------------------------------------------------------------- folders


def cell_dir(root: Path, name: str) -> Path:
    """`root/cells/<name>`, refusing any name that would leave the results folder."""
    base = (root / "cells").resolve()
    path = (base / name).resolve()
    if path.parent != base or name in ("", ".", ".."):
        raise UserError(f"cell name {name!r} would write outside {root}/cells; rename it")
    return root / "cells" / name


def default_results_dir(experiment) -> Path:
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


def check_resumable(root: Path, cells, context: CellContext) -> None:
    """Refuse to resume or skip a cell whose folder holds a run of a different config."""
    from harness.cells import cell_config_record

    for cell in cells:
        path = cell_dir(root, cell.name) / "config.json"
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


def _pick(rows: list[dict], metric: str, **context: Any) -> dict | None:
    chosen = [r for r in rows if r.get("metric") == metric
              and all(r.get(k) == v for k, v in context.items())]
    return chosen[-1] if chosen else None


def summary_row(cell, rows: list[dict], status: dict, summary_weights: str) -> dict:
    """One summary.csv row (docs/results.md) from a cell's tidy rows and status."""
    value = lambda row: None if row is None else row.get("value")  # noqa: E731
    row: dict[str, Any] = {"cell": cell.name, "model": cell.family,
                           "dataset": rows[0].get("dataset") if rows else None,
                           "effective_depth": cell.effective_depth,
                           "seed": cell.seed if cell.kind != "codec" else None,
                           "params": cell.params,
                           "status": status.get("status", "pending"),
                           "error": status.get("error"), "wall_s": status.get("wall_s")}
    if cell.kind == "codec":
        row["test_bits_per_dim"] = value(_pick(rows, "test_bits_per_dim"))
        row["test_bits_per_dim_ci95"] = value(_pick(rows, "test_bits_per_dim_ci95"))
    else:
        available = {r.get("weights") for r in rows if r.get("metric") == "test_bits_per_dim"}
        weights = summary_weights if summary_weights in available else (
            sorted(available)[0] if available else None)
        if weights is not None:
            row["weights"] = weights
            row["test_bits_per_dim"] = value(_pick(rows, "test_bits_per_dim", weights=weights))
            row["test_bits_per_dim_ci95"] = value(_pick(rows, "test_bits_per_dim_ci95",
                                                        weights=weights))
            row["test_bits_per_dim_ema"] = value(_pick(rows, "test_bits_per_dim", weights="ema"))
            iw = [r for r in rows if r.get("metric") == "iw_bits_per_dim"
                  and r.get("weights") == weights]
            if iw:
                best = max(iw, key=lambda r: r.get("k") or 0)
                row["iw_bits_per_dim"], row["iw_k"] = best["value"], best.get("k")
        row["train_images_per_s"] = value(_pick(rows, "train_images_per_s"))
        row["flops_per_image"] = value(_pick(rows, "flops_per_image"))
        row["steps"] = value(_pick(rows, "steps"))
        if cell.kind == "train" and row["params"] is None:
            row["params"] = value(_pick(rows, "params"))
        for methods, column in ((("ancestral", "naive"), "sample_images_per_s"),
                                (("cached",), "sample_images_per_s_cached")):
            sampled = [r for r in rows if r.get("metric") == "sample_images_per_s"
                       and r.get("method") in methods]
            if sampled:  # the largest batch measured: the throughput a user would get
                row[column] = max(sampled, key=lambda r: r.get("batch_size") or 0)["value"]
    return row


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in SUMMARY_COLUMNS})
    return buffer.getvalue()


def rebuild_shared_files(root: Path, cells, summary_weights: str) -> list[dict]:
    """Rewrite metrics.jsonl and summary.csv from the cells' own files (atomic, under flock)."""
    with locks.guard(root):
        all_rows: list[dict] = []
        summary: list[dict] = []
        for cell in cells:
            directory = cell_dir(root, cell.name)
            status = read_status(directory)
            rows = read_rows(directory) if status.get("status") == "done" else []
            all_rows += rows
            summary.append(summary_row(cell, rows, status, summary_weights))
        atomic.write_text(root / "metrics.jsonl",
                          "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                  for r in all_rows))
        atomic.write_text(root / "summary.csv", _csv_text(summary))
    return summary
