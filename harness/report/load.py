"""Read a results folder (docs/results.md) into DataFrames and per-cell file handles.

Nothing here computes a result: it only reads rows and files, normalises column types and
records what could not be read (as notes for the report) instead of failing. A folder with no
results at all, or a corrupt `summary.csv` / `metrics.jsonl`, is a `UserError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.atomic import read_jsonl
from harness.errors import UserError

SUMMARY_COLUMNS: tuple[str, ...] = (
    "cell", "model", "dataset", "effective_depth", "seed", "params", "test_bits_per_dim",
    "test_bits_per_dim_ci95", "weights", "test_bits_per_dim_ema", "iw_bits_per_dim", "iw_k",
    "train_images_per_s", "sample_images_per_s", "sample_images_per_s_cached",
    "flops_per_image", "steps", "wall_s", "status", "error",
)
_SUMMARY_TEXT = {"cell", "model", "dataset", "weights", "status", "error"}

METRIC_COLUMNS: tuple[str, ...] = (
    "experiment", "cell", "model", "dataset", "metric", "value", "split", "weights", "layer", "k",
    "method", "batch_size", "image_size", "temperature", "effective_depth", "seed", "params",
)
_METRIC_TEXT = {"experiment", "cell", "model", "dataset", "metric", "split", "weights", "method"}

# A name that is safe as one path component (cells/<cell>/, reports/<experiment>.pdf).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+-]*$")
_PER_IMAGE = re.compile(r"^per_image_test_bits_per_dim_([A-Za-z0-9_]+)\.npy$")


@dataclass
class CellFiles:
    """What one `cells/<cell>/` folder holds; every part may be missing (empty)."""

    name: str
    path: Path
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    train_log: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_image: dict[str, Path] = field(default_factory=dict)  # weights -> .npy
    samples: Path | None = None


@dataclass
class Results:
    root: Path
    experiment: str
    summary: pd.DataFrame  # one row per cell, SUMMARY_COLUMNS, numbers as float
    metrics: pd.DataFrame  # tidy rows, METRIC_COLUMNS, numbers as float
    cells: dict[str, CellFiles]
    notes: list[str] = field(default_factory=list)  # files that could not be read, and why

    def per_image_bits_per_dim(self, cell: str, weights: str) -> np.ndarray | None:
        """(N_test,) float64 per-image bits/dim, or None (noted) when absent or unreadable."""
        files = self.cells.get(cell)
        path = files.per_image.get(weights) if files else None
        if path is None:
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            self.notes.append(f"{_rel(path, self.root)} unreadable ({error}); skipped")
            return None
        if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.floating):
            self.notes.append(f"{_rel(path, self.root)} is not a non-empty 1-D float array "
                              f"(shape {array.shape}, {array.dtype}); skipped")
            return None
        return array.astype(np.float64)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name)) and ".." not in name


def _no_results(root: Path) -> UserError:
    return UserError(f"no results in {root}: run `harness run experiments/<name>.yaml` first "
                     "(or pass the folder it wrote)")


def _read_json(path: Path, notes: list[str], root: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        notes.append(f"{_rel(path, root)} unreadable ({error}); ignored")
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _typed(frame: pd.DataFrame, columns: tuple[str, ...], text: set[str]) -> pd.DataFrame:
    """Every contract column present; text columns as str/None, the rest as float."""
    frame = frame.copy()
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    for column in frame.columns:
        if column in text:
            frame[column] = _text([None if _missing(v) else str(v) for v in frame[column]],
                                  frame.index)
        elif column in columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _text(values: list, index) -> pd.Series:
    """An object column that keeps None as None (a plain list assignment turns it into NaN)."""
    return pd.Series(values, index=index, dtype=object)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def read_summary(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return _typed(pd.DataFrame(), SUMMARY_COLUMNS, _SUMMARY_TEXT)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f"{path} is not a readable CSV ({error}); re-run `harness run` to "
                        "rewrite it") from error
    if "cell" not in frame.columns:
        raise UserError(f"{path} has no 'cell' column (columns: {', '.join(frame.columns)}); "
                        "it is not a summary.csv of docs/results.md")
    return _typed(frame, SUMMARY_COLUMNS, _SUMMARY_TEXT)


def read_metrics(path: Path) -> pd.DataFrame:
    try:
        rows = read_jsonl(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} has a corrupt row ({error}); fix or delete that line and "
                        "re-run `harness report`") from error
    rows = [row for row in rows if isinstance(row, dict)]
    return _typed(pd.DataFrame(rows), METRIC_COLUMNS, _METRIC_TEXT)


def _read_train_log(path: Path, notes: list[str], root: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        rows = read_jsonl(path)
    except (OSError, ValueError) as error:
        notes.append(f"{_rel(path, root)} unreadable ({error}); training curve skipped")
        return pd.DataFrame()
    return pd.DataFrame([row for row in rows if isinstance(row, dict)])


def _read_cell(root: Path, name: str, notes: list[str]) -> CellFiles:
    path = root / "cells" / name
    files = CellFiles(name=name, path=path)
    if not path.is_dir():
        return files
    files.config = _read_json(path / "config.json", notes, root)
    files.provenance = _read_json(path / "provenance.json", notes, root)
    files.status = _read_json(path / "status.json", notes, root)
    files.train_log = _read_train_log(path / "train_log.jsonl", notes, root)
    for candidate in sorted(path.glob("per_image_test_bits_per_dim_*.npy")):
        match = _PER_IMAGE.match(candidate.name)
        if match:
            files.per_image[match.group(1)] = candidate
    samples = path / "samples.png"
    files.samples = samples if samples.is_file() else None
    return files


def _summary_from_metrics(metrics: pd.DataFrame, cells: dict[str, CellFiles]) -> pd.DataFrame:
    """A summary when summary.csv is absent (a run still in progress): one row per cell from
    the tidy rows and status.json; raw weights preferred for `test_bits_per_dim`."""
    rows = []
    names = list(dict.fromkeys(list(metrics["cell"].dropna()) + list(cells)))
    for name in names:
        own = metrics[metrics["cell"] == name]
        row: dict = {"cell": name}
        for key in ("model", "dataset", "effective_depth", "seed", "params"):
            values = own[key].dropna()
            row[key] = values.iloc[0] if len(values) else None
        status = cells[name].status if name in cells else {}
        row["status"] = status.get("status")
        row["error"] = status.get("error")
        row["wall_s"] = status.get("wall_s")

        def pick(metric: str, weights: str | None = None, own=own):
            chosen = own[(own["metric"] == metric) & (own["split"].isin(["test"])
                                                     | own["split"].isna())]
            if weights is not None:
                chosen = chosen[chosen["weights"] == weights]
            return chosen["value"].iloc[-1] if len(chosen) else None

        has_weights = own[own["metric"] == "test_bits_per_dim"]["weights"].dropna()
        weights = "raw" if "raw" in set(has_weights) else (
            has_weights.iloc[0] if len(has_weights) else None)
        row["weights"] = weights
        row["test_bits_per_dim"] = pick("test_bits_per_dim", weights)
        row["test_bits_per_dim_ci95"] = pick("test_bits_per_dim_ci95", weights)
        row["test_bits_per_dim_ema"] = pick("test_bits_per_dim", "ema")
        iw = own[own["metric"] == "iw_bits_per_dim"]
        if len(iw):
            best = iw.sort_values("k").iloc[-1]
            row["iw_bits_per_dim"], row["iw_k"] = best["value"], best["k"]
        row["flops_per_image"] = pick("flops_per_image")
        row["train_images_per_s"] = pick("train_images_per_s")
        for method, column in (("ancestral", "sample_images_per_s"),
                               ("naive", "sample_images_per_s"),
                               ("cached", "sample_images_per_s_cached")):
            sampled = own[(own["metric"] == "sample_images_per_s") & (own["method"] == method)]
            if len(sampled):
                row[column] = sampled.sort_values("batch_size")["value"].iloc[-1]
        log = cells[name].train_log if name in cells else pd.DataFrame()
        if "step" in log.columns and len(log):
            row["steps"] = pd.to_numeric(log["step"], errors="coerce").max()
        rows.append(row)
    return _typed(pd.DataFrame(rows), SUMMARY_COLUMNS, _SUMMARY_TEXT)


def _experiment_name(root: Path, metrics: pd.DataFrame, notes: list[str]) -> str:
    """plan.json, then experiment.yaml, then the rows' `experiment`, then the folder name."""
    candidates: list[object] = []
    plan = _read_json(root / "plan.json", notes, root)
    candidates += [plan.get("experiment"), plan.get("name")]
    yaml_path = root / "experiment.yaml"
    if yaml_path.is_file():
        try:
            import yaml

            loaded = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                candidates.append(loaded.get("name"))
        except Exception as error:  # noqa: BLE001 - a bad record copy must not block a report
            notes.append(f"experiment.yaml unreadable ({type(error).__name__}); name not "
                         "taken from it")
    names = metrics["experiment"].dropna().unique() if len(metrics) else []
    if len(names) == 1:
        candidates.append(names[0])
    candidates += [root.name, root.resolve().name]
    for candidate in candidates:
        if isinstance(candidate, str) and is_safe_name(candidate):
            return candidate
    return "experiment"


def load_results(root: Path) -> Results:
    """Read `root` (a results folder); `UserError` when it holds no results."""
    root = Path(root)
    if not root.is_dir():
        raise _no_results(root)
    notes: list[str] = []
    summary_path, metrics_path = root / "summary.csv", root / "metrics.jsonl"
    metrics = (read_metrics(metrics_path) if metrics_path.is_file()
               else _typed(pd.DataFrame(), METRIC_COLUMNS, _METRIC_TEXT))
    # Folders that are not cells (hidden or odd names) are ignored; names from rows are checked.
    cell_dirs = sorted(p.name for p in (root / "cells").glob("*")
                       if p.is_dir() and is_safe_name(p.name)) \
        if (root / "cells").is_dir() else []
    summary = read_summary(summary_path) if summary_path.is_file() else None
    if summary is not None and summary["cell"].isna().any():
        notes.append(f"summary.csv: {int(summary['cell'].isna().sum())} row(s) without a cell "
                     "name ignored")
        summary = summary[summary["cell"].notna()]

    names = list(summary["cell"].dropna()) if summary is not None else []
    names = list(dict.fromkeys(names + list(metrics["cell"].dropna()) + cell_dirs))
    for name in names:
        if not is_safe_name(name):
            raise UserError(f"cell name {name!r} in {root} is not a plain folder name; "
                            "rename the cell (letters, digits, _ . , = + -)")
    cells = {name: _read_cell(root, name, notes) for name in names}
    if summary is None:
        if not len(metrics) and not cell_dirs:
            raise _no_results(root)
        notes.append("summary.csv missing: summary rebuilt from metrics.jsonl and status.json")
        summary = _summary_from_metrics(metrics, cells)
    if not len(summary):
        raise _no_results(root)
    # Sampling-speed cells record dataset "none": they belong to no dataset's comparisons.
    for frame in (summary, metrics):
        frame["dataset"] = _text([None if d in (None, "none") else d for d in frame["dataset"]],
                                 frame.index)
    # status.json fills what the summary leaves empty (e.g. a cell still running).
    for index, row in summary.iterrows():
        status = cells[row["cell"]].status
        if _missing(row["status"]) and status.get("status"):
            summary.at[index, "status"] = str(status["status"])
        if _missing(row["wall_s"]) and isinstance(status.get("wall_s"), (int, float)):
            summary.at[index, "wall_s"] = float(status["wall_s"])
    return Results(root=root, experiment=_experiment_name(root, metrics, notes),
                   summary=summary.reset_index(drop=True), metrics=metrics, cells=cells,
                   notes=notes)


# --------------------------------------------------------------------------- provenance

_PROVENANCE_KEYS = {
    "machine": ("machine", "hostname", "host", "platform", "cpu"),
    "device": ("device", "accelerator", "gpu", "device_name"),
    "versions": ("versions", "package_versions", "packages", "python"),
    "git": ("git_revision", "git", "git_commit", "revision", "commit"),
}


def _flatten(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flatten(v)}" for k, v in sorted(value.items())
                         if not _missing(v))
    if isinstance(value, (list, tuple)):
        return ", ".join(_flatten(v) for v in value)
    return str(value)


def _describe(key: str, value) -> str:
    """One readable line per provenance field; dicts as written by harness.provenance."""
    if key == "git" and isinstance(value, dict) and "commit" in value:
        commit = str(value.get("commit") or "unknown")[:12]
        return commit + (" (uncommitted changes)" if value.get("dirty") else "")
    if key == "machine" and isinstance(value, dict):
        parts = [str(value[k]) for k in ("platform", "processor") if not _missing(value.get(k))]
        if not _missing(value.get("cores")):
            parts.append(f"{value['cores']} cores")
        if not _missing(value.get("torch_threads")):
            parts.append(f"{value['torch_threads']} torch threads")
        host = value.get("hostname")
        text = ", ".join(parts) or _flatten(value)
        return f"{host}: {text}" if not _missing(host) else text
    return _flatten(value)


def provenance_lines(results: Results) -> dict[str, list[str]]:
    """Distinct machine / device / versions / git descriptions over all cells, in cell order."""
    found: dict[str, list[str]] = {key: [] for key in _PROVENANCE_KEYS}
    for files in results.cells.values():
        for key, aliases in _PROVENANCE_KEYS.items():
            for alias in aliases:
                if alias in files.provenance and not _missing(files.provenance[alias]):
                    text = _describe(key, files.provenance[alias])
                    if text not in found[key]:
                        found[key].append(text)
                    break
    return found
