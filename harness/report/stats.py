"""Paired comparisons between cells on the same test images.

Unpaired 95% intervals of two models' mean bits/dim overlap long after the models differ: the
per-image losses of two models are strongly correlated (hard images are hard for both). The paired
difference d_i = a_i - b_i removes that shared variation (the CPU-scale prototype in
docs/benchmarks.md: ±0.019 unpaired vs ±0.002 paired). Interval: mean(d) ± 1.96 · sd(d) / √N, with
the sample standard deviation (ddof = 1), the same normal approximation as `test_bits_per_dim_ci95`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.contract import ci95
from harness.report import roles
from harness.report.load import Results


@dataclass(frozen=True)
class PairedDifference:
    """`shallow - deep` over N paired images, in bits/dim."""

    mean_bits_per_dim: float
    ci95_bits_per_dim: float
    fraction_deeper_better: float  # share of images where `deep` has strictly lower bits/dim
    n_images: int


def paired_difference(shallow: np.ndarray, deep: np.ndarray) -> PairedDifference:
    """Mean ± 95% CI of `shallow - deep` per image; positive means the deeper model is better."""
    shallow = np.asarray(shallow, dtype=np.float64)
    deep = np.asarray(deep, dtype=np.float64)
    assert shallow.ndim == 1 and shallow.shape == deep.shape, (shallow.shape, deep.shape)
    n = shallow.shape[0]
    assert n >= 1
    diff = shallow - deep  # (N,)
    return PairedDifference(
        mean_bits_per_dim=float(diff.mean()),
        ci95_bits_per_dim=ci95(diff) if n > 1 else math.nan,
        fraction_deeper_better=float(np.mean(deep < shallow)),
        n_images=n,
    )


def choose_reference(seed: int, deepest_by_seed: dict[int, str]) -> tuple[str, str] | None:
    """The deepest cell to compare a cell of `seed` with, and how it was paired.

    Same seed when the deepest depth was run with it; otherwise seed 0's deepest cell
    ("seed-0 fallback"); otherwise the lowest seed's (said so). None when there is no deepest cell.
    """
    if not deepest_by_seed:
        return None
    if seed in deepest_by_seed:
        return deepest_by_seed[seed], "same seed"
    if 0 in deepest_by_seed:
        return deepest_by_seed[0], "seed-0 fallback"
    lowest = min(deepest_by_seed)
    return deepest_by_seed[lowest], f"seed-{lowest} fallback"


PAIRED_COLUMNS: tuple[str, ...] = (
    "dataset", "weights", "cell", "effective_depth", "seed", "reference_cell",
    "reference_depth", "reference_seed", "pairing", "n_images", "mean_diff_bits_per_dim",
    "ci95_bits_per_dim", "fraction_deeper_better",
)


def primary_weights(summary: pd.DataFrame) -> str | None:
    """The weights most depth-cell summary rows report (`raw` wins a tie), or None."""
    counts = Counter(w for w in roles.depth_cells(summary)["weights"]
                     if isinstance(w, str) and w)
    if not counts:
        return None
    return max(counts, key=lambda w: (counts[w], w == "raw", w))


def paired_differences(results: Results) -> pd.DataFrame:
    """Every effective depth vs the deepest depth of the same dataset and model, on the same
    test images.

    One row per (cell, weights) for which both cells wrote per-image bits/dim; pairs cells of the
    same seed, else the deepest cell of seed 0 (`choose_reference`). Positive
    `mean_diff_bits_per_dim` means the deeper model is better.
    """
    summary = results.summary
    swept = roles.depth_cells(summary)
    rows = []
    for dataset, model in sorted(set(zip(swept["dataset"].fillna(""), swept["model"].fillna("")))):
        group = swept[(swept["dataset"].fillna("") == dataset)
                      & (swept["model"].fillna("") == model)]
        group = group.sort_values(["effective_depth", "seed", "cell"], na_position="last")
        deepest = group["effective_depth"].max()
        deepest_by_seed: dict[int, str] = {}
        for _, row in group[group["effective_depth"] == deepest].iterrows():
            seed = 0 if pd.isna(row["seed"]) else int(row["seed"])
            if results.cells[row["cell"]].per_image and seed not in deepest_by_seed:
                deepest_by_seed[seed] = row["cell"]
        for _, row in group[group["effective_depth"] < deepest].iterrows():
            seed = 0 if pd.isna(row["seed"]) else int(row["seed"])
            reference = choose_reference(seed, deepest_by_seed)
            if reference is None:
                continue
            reference_cell, pairing = reference
            common = sorted(set(results.cells[row["cell"]].per_image)
                            & set(results.cells[reference_cell].per_image))
            for weights in common:
                shallow = results.per_image_bits_per_dim(row["cell"], weights)
                deep = results.per_image_bits_per_dim(reference_cell, weights)
                if shallow is None or deep is None:
                    continue
                if shallow.shape != deep.shape:
                    results.notes.append(
                        f"{row['cell']} vs {reference_cell} ({weights}): per-image files have "
                        f"{shallow.size} and {deep.size} images, not the same test split; "
                        "pair skipped")
                    continue
                diff = paired_difference(shallow, deep)
                ref_row = group[group["cell"] == reference_cell].iloc[0]
                rows.append({
                    "dataset": dataset or None, "weights": weights, "cell": row["cell"],
                    "effective_depth": row["effective_depth"], "seed": row["seed"],
                    "reference_cell": reference_cell,
                    "reference_depth": ref_row["effective_depth"],
                    "reference_seed": ref_row["seed"], "pairing": pairing,
                    "n_images": diff.n_images, "mean_diff_bits_per_dim": diff.mean_bits_per_dim,
                    "ci95_bits_per_dim": diff.ci95_bits_per_dim,
                    "fraction_deeper_better": diff.fraction_deeper_better,
                })
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
