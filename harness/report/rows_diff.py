"""Compare the non-timing metric rows of two results folders (or row lists): the check that a
refactor left every measured number as it was (`scripts/compare_rows.py`, and the golden-rows
test of the smoke experiment).

Rows are keyed by every field except `value`; timing and resource rows (`*_per_s`, `*_wall_s`,
`peak_memory_bytes`) and timing fields inside rows are left out, since they differ from run to
run. Values must agree within `rtol` (relative) or `atol`: float rounding, nothing more.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.atomic import read_jsonl

TIMING_METRIC_SUFFIXES = ("_per_s", "_wall_s")
RESOURCE_METRICS = {"peak_memory_bytes"}
TIMING_FIELDS = {"min_images_per_s", "max_images_per_s", "spread_fraction", "rounds", "settled"}


def is_timing(row: dict) -> bool:
    metric = str(row.get("metric", ""))
    return metric.endswith(TIMING_METRIC_SUFFIXES) or metric in RESOURCE_METRICS


def keyed(rows: list[dict]) -> dict[str, float]:
    """{key of the row without its value: value} for every non-timing row."""
    out: dict[str, float] = {}
    for row in rows:
        if is_timing(row):
            continue
        key = json.dumps({k: v for k, v in row.items()
                          if k != "value" and k not in TIMING_FIELDS}, sort_keys=True,
                         default=str)
        assert key not in out, f"two rows share the key {key}"
        out[key] = row.get("value")
    return out


def _close(a, b, rtol: float, atol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= atol + rtol * abs(b)
    return a == b


def diff_rows(before: list[dict], after: list[dict], rtol: float = 0.0,
              atol: float = 0.0) -> list[str]:
    """One line per difference: a row only in one side, or a value outside the tolerance."""
    old, new = keyed(before), keyed(after)
    lines = [f"only before: {k} = {old[k]}" for k in sorted(set(old) - set(new))]
    lines += [f"only after: {k} = {new[k]}" for k in sorted(set(new) - set(old))]
    for key in sorted(set(old) & set(new)):
        if not _close(new[key], old[key], rtol, atol):
            lines.append(f"differs: {key}: {old[key]!r} -> {new[key]!r}")
    return lines


def max_relative_difference(before: list[dict], after: list[dict]) -> float:
    old, new = keyed(before), keyed(after)
    worst = 0.0
    for key in set(old) & set(new):
        a, b = old[key], new[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a != b:
            worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
    return worst


def folder_rows(results: Path) -> list[dict]:
    """Every row of a results folder's shared `metrics.jsonl`, less run-specific keys."""
    rows = read_jsonl(Path(results) / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k != "experiment"} for row in rows]
