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
import yaml

from harness.atomic import read_jsonl
from harness.contract import (
    DEFAULT_SUMMARY_WEIGHTS, METRIC_COLUMNS, METRIC_TEXT_COLUMNS, SUMMARY_COLUMNS,
    SUMMARY_TEXT_COLUMNS, summary_row,
)
from harness.errors import UserError

_SUMMARY_TEXT = SUMMARY_TEXT_COLUMNS
_METRIC_TEXT = METRIC_TEXT_COLUMNS

# A name that is safe as one path component (cells/<cell>/, <results>/<experiment>.pdf).
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
    return bool(_SAFE_NAME.fullmatch(name)) and ".." not in name  # fullmatch: `$` allows "x\n"


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


# How the report names the reference codec cells (kind `codec`, harness.engine.codecs).
CODEC_NAMES = {"png": "PNG", "webp": "WebP lossless"}


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
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error}); re-run `harness run` to rewrite "
                        "it") from error
    except ValueError as error:  # names the file and line
        raise UserError(f"{error}; fix or delete that line and re-run `harness report`") \
            from error
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


def _summary_from_metrics(metrics: pd.DataFrame, cells: dict[str, CellFiles],
                          summary_weights: str) -> pd.DataFrame:
    """A summary when summary.csv is absent (a run still in progress): one row per cell from
    the tidy rows and status.json, made by the contract's `summary_row` as the runner makes it."""
    rows = []
    names = list(dict.fromkeys(list(metrics["cell"].dropna()) + list(cells)))
    for name in names:
        own = [{k: v for k, v in row.items() if not _missing(v)}
               for row in metrics[metrics["cell"] == name].to_dict("records")]
        files = cells.get(name)
        config = files.config if files else {}
        cell = {"name": name, **{key: config[key] for key in ("kind", "family")
                                 if isinstance(config.get(key), str)}}
        rows.append(summary_row(cell, own, files.status if files else {}, summary_weights))
    return _typed(pd.DataFrame(rows), SUMMARY_COLUMNS, _SUMMARY_TEXT)


def _summary_weights(root: Path, notes: list[str]) -> str:
    """runner.summary_weights of the experiment as loaded (experiment.yaml), else the default."""
    record = _read_yaml(root / "experiment.yaml", notes)
    runner = record.get("runner") if isinstance(record.get("runner"), dict) else {}
    weights = runner.get("summary_weights")
    return weights if weights in ("raw", "ema") else DEFAULT_SUMMARY_WEIGHTS


def _read_yaml(path: Path, notes: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 - a bad record copy must not block a report
        notes.append(f"{path.name} unreadable ({type(error).__name__}); ignored")
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _experiment_name(root: Path, metrics: pd.DataFrame, notes: list[str]) -> str:
    """plan.json, then experiment.yaml, then the rows' `experiment`, then the folder name."""
    candidates: list[object] = []
    plan = _read_json(root / "plan.json", notes, root)
    candidates += [plan.get("experiment"), plan.get("name")]
    candidates.append(_read_yaml(root / "experiment.yaml", notes).get("name"))
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
        summary = _summary_from_metrics(metrics, cells, _summary_weights(root, notes))
    if not len(summary):
        raise _no_results(root)
    # Sampling-speed cells record dataset "none": they belong to no dataset's comparisons.
    for frame in (summary, metrics):
        frame["dataset"] = _text([None if d in (None, "none") else d for d in frame["dataset"]],
                                 frame.index)
    # How the report names and groups each cell, from its config.json: `kind` (train, speed,
    # codec) and `model_label` (the family's display name; a codec's own name).
    kinds, labels = [], []
    for _, row in summary.iterrows():
        config = cells[row["cell"]].config
        kind = config.get("kind") if isinstance(config.get("kind"), str) else (
            "codec" if row["model"] == "codec" else "train")
        label = config.get("family_label")
        if kind == "codec":
            codec = config.get("model") if isinstance(config.get("model"), str) else \
                str(row["cell"]).removeprefix("codec_")
            label = f"{CODEC_NAMES.get(codec, codec)} (codec)"
        kinds.append(kind)
        labels.append(label if isinstance(label, str) and label else
                      (str(row["model"]) if not _missing(row["model"]) else "model"))
    summary["kind"] = _text(kinds, summary.index)
    summary["model_label"] = _text(labels, summary.index)
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
    """One readable line per provenance field; dicts as written by harness.run.provenance."""
    if key == "git" and isinstance(value, dict) and "commit" in value:
        commit = str(value.get("commit") or "unknown")[:12]
        return commit + (" (uncommitted changes)" if value.get("dirty") else "")
    if key == "machine" and isinstance(value, dict):
        parts = [str(value[k]) for k in ("platform", "processor") if not _missing(value.get(k))]
        if not _missing(value.get("cores")):
            parts.append(f"{value['cores']} cores")
        if not _missing(value.get("torch_threads")):
            threads = value["torch_threads"]
            parts.append(f"{threads} torch thread{'' if threads == 1 else 's'}")
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
