"""The results-folder contract (docs/results.md), in one place: file names, the summary.csv
columns and how a summary row is made from a cell's tidy rows, and the 95% interval.

The runner (harness.run) writes by it and the report (harness.report) reads by it; nothing else
is shared between the two. numpy only: no torch, no pandas.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

STATUS_FILE = "status.json"
ROWS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
# cells/<cell>/sampling_speed.json: the speed phase's record of the cell ({"status", "error",
# "settings", "rows", "wall_s"}), written after every cell of the run has finished.
SPEED_FILE = "sampling_speed.json"
# cells/<cell>/slurm.json: job id and log paths, written by the submitting runner (which does not
# hold the cell's lock) when the cell goes to Slurm.
LAUNCH_FILE = "slurm.json"
Z95 = 1.96  # normal 95% interval: mean ± Z95 · sd / √N

SUMMARY_COLUMNS: tuple[str, ...] = (
    "cell", "model", "dataset", "effective_depth", "seed", "params", "test_bits_per_dim",
    "test_bits_per_dim_ci95", "weights", "test_bits_per_dim_ema", "iw_bits_per_dim", "iw_k",
    "train_images_per_s", "sample_images_per_s", "sample_images_per_s_cached",
    "flops_per_image", "steps", "wall_s", "status", "error",
)
SUMMARY_TEXT_COLUMNS = frozenset({"cell", "model", "dataset", "weights", "status", "error"})
METRIC_COLUMNS: tuple[str, ...] = (
    "experiment", "cell", "model", "dataset", "metric", "value", "split", "weights", "layer", "k",
    "method", "batch_size", "image_size", "temperature", "effective_depth", "seed", "params",
)
METRIC_TEXT_COLUMNS = frozenset({"experiment", "cell", "model", "dataset", "metric", "split",
                                 "weights", "method"})
# The weights summary.csv headlines when the experiment does not say (runner.summary_weights).
# Final weights: an EMA misleads on short runs (the CPU-scale prototype, docs/benchmarks.md).
DEFAULT_SUMMARY_WEIGHTS = "raw"


def ci95(values: np.ndarray) -> float:
    """Half-width of the normal 95% confidence interval of the mean: 1.96 · sd / √N (ddof 1)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return 0.0
    return float(Z95 * values.std(ddof=1) / math.sqrt(values.size))


def pick(rows: list[dict], metric: str, **context: Any) -> dict | None:
    """The last row of `metric` whose keys match `context` (None: no such row)."""
    chosen = [r for r in rows if r.get("metric") == metric
              and all(r.get(k) == v for k, v in context.items())]
    return chosen[-1] if chosen else None


def summary_row(cell: dict, rows: list[dict], status: dict,
                summary_weights: str = DEFAULT_SUMMARY_WEIGHTS) -> dict:
    """One summary.csv row from a cell's tidy rows and status.json.

    `cell`: {"name", "kind" ("train" | "speed" | "codec"), "family", "effective_depth", "seed",
    "params"} (missing keys are taken from the rows, which carry them: docs/results.md).
    """
    value = lambda row: None if row is None else row.get("value")  # noqa: E731
    first = rows[0] if rows else {}
    kind = cell.get("kind", "codec" if first.get("model") == "codec" else "train")
    row: dict[str, Any] = {
        "cell": cell["name"], "model": cell.get("family", first.get("model")),
        "dataset": first.get("dataset"),
        "effective_depth": cell.get("effective_depth", first.get("effective_depth")),
        "seed": None if kind == "codec" else cell.get("seed", first.get("seed")),
        "params": cell.get("params", first.get("params")),
        "status": status.get("status", "pending"), "error": status.get("error"),
        "wall_s": status.get("wall_s")}
    if kind == "codec":
        row["test_bits_per_dim"] = value(pick(rows, "test_bits_per_dim"))
        row["test_bits_per_dim_ci95"] = value(pick(rows, "test_bits_per_dim_ci95"))
        return row
    available = {r.get("weights") for r in rows if r.get("metric") == "test_bits_per_dim"}
    weights = summary_weights if summary_weights in available else (
        sorted(available)[0] if available else None)
    if weights is not None:
        row["weights"] = weights
        row["test_bits_per_dim"] = value(pick(rows, "test_bits_per_dim", weights=weights))
        row["test_bits_per_dim_ci95"] = value(pick(rows, "test_bits_per_dim_ci95",
                                                   weights=weights))
        row["test_bits_per_dim_ema"] = value(pick(rows, "test_bits_per_dim", weights="ema"))
        iw = [r for r in rows if r.get("metric") == "iw_bits_per_dim"
              and r.get("weights") == weights]
        if iw:
            best = max(iw, key=lambda r: r.get("k") or 0)
            row["iw_bits_per_dim"], row["iw_k"] = best["value"], best.get("k")
    row["train_images_per_s"] = value(pick(rows, "train_images_per_s"))
    row["flops_per_image"] = value(pick(rows, "flops_per_image"))
    row["steps"] = value(pick(rows, "steps"))
    if row["params"] is None:
        row["params"] = value(pick(rows, "params"))
    # `sample_images_per_s`: the family's own sampler (a VAE's ancestral one, a PixelCNN's naive
    # one, any other family's); `_cached`: the cached autoregressive sampler.
    for cached, column in ((False, "sample_images_per_s"), (True, "sample_images_per_s_cached")):
        sampled = [r for r in rows if r.get("metric") == "sample_images_per_s"
                   and (r.get("method") == "cached") == cached]
        if sampled:  # the largest batch (then images) measured: what a user would get
            row[column] = max(sampled, key=lambda r: (r.get("batch_size") or 0,
                                                      r.get("image_size") or 0))["value"]
    return row
