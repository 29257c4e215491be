"""Sample quality beside likelihood: the table of the sample_quality study's rows per cell,
with the real-vs-real floor, and bits/dim against FD and against precision/recall (Theis et
al. 2016: likelihood and sample quality need not agree). docs/quality.md defines the metrics."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from harness.report import roles
from harness.report.figures import FIGSIZE, Rendered, _finish, skipped
from harness.report.format import MISSING, Table, fmt_fixed, fmt_int, fmt_percent, is_missing
from harness.report.tables import sort_cells

METRICS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
           "memorized_fraction", "memorized_fraction_pixels")


def quality_frame(metrics: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, quality_set) with the metrics as columns, n, the extractor, and the
    cell's label, depth and test bits/dim; cells in report order, the floor last."""
    if "quality_set" not in metrics.columns:
        return pd.DataFrame()
    rows = metrics[metrics["metric"].isin(METRICS) & metrics["quality_set"].notna()]
    if not len(rows):
        return pd.DataFrame()
    keys = ["cell", "quality_set", "n_samples", "n_reference", "features"]
    wide = rows.pivot_table(index=keys, columns="metric", values="value",
                            aggfunc="first").reset_index()
    for metric in METRICS:
        if metric not in wide.columns:
            wide[metric] = float("nan")
    info = summary.set_index("cell")
    labels = dict(zip(summary["cell"], roles.labels(summary)))
    wide["model_label"] = [labels.get(c, c) for c in wide["cell"]]
    wide["effective_depth"] = [info["effective_depth"].get(c) for c in wide["cell"]]
    wide["test_bits_per_dim"] = [info["test_bits_per_dim"].get(c) for c in wide["cell"]]
    samples = wide[wide["quality_set"] == "samples"]
    order = [c for c in sort_cells(summary)["cell"] if c in set(samples["cell"])]
    samples = samples.set_index("cell").loc[order].reset_index()
    # The floor is the same for every cell that shares the reference: show it once.
    floor = wide[wide["quality_set"] == "real_vs_real"].drop_duplicates(
        subset=["n_samples", "n_reference", "features"] + list(METRICS))
    floor = floor.assign(cell="real vs real (test images)", model_label="floor",
                         effective_depth=None, test_bits_per_dim=None)
    return pd.concat([samples, floor], ignore_index=True)


def quality_table(metrics: pd.DataFrame, summary: pd.DataFrame) -> Table | None:
    data = quality_frame(metrics, summary)
    if not len(data):
        return None
    display = pd.DataFrame({
        "cell": data["cell"],
        "model": data["model_label"],
        "depth": data["effective_depth"].map(fmt_int),
        "test bits/dim": data["test_bits_per_dim"].map(fmt_fixed),
        "FD": data["fd"].map(lambda v: fmt_fixed(v, 3)),
        "KID (± std)": [MISSING if is_missing(m) else f"{m:.4f} ± {s:.4f}"
                        for m, s in zip(data["kid_mean"], data["kid_std"])],
        "precision": data["precision"].map(lambda v: fmt_fixed(v, 3)),
        "recall": data["recall"].map(lambda v: fmt_fixed(v, 3)),
        "density": data["density"].map(lambda v: fmt_fixed(v, 3)),
        "coverage": data["coverage"].map(lambda v: fmt_fixed(v, 3)),
        "memorized (features / pixels)": [
            MISSING if is_missing(a) else f"{fmt_percent(a)} / {fmt_percent(b)}"
            for a, b in zip(data["memorized_fraction"], data["memorized_fraction_pixels"])],
        "n": [f"{int(s):,} vs {int(r):,}" for s, r in zip(data["n_samples"],
                                                           data["n_reference"])],
    })
    extractors = ", ".join(sorted(set(data["features"].dropna())))
    caption = (f"Features: {extractors} (docs/quality.md). Each model's samples against the "
               "first n test images; the last row scores the next n test images against the "
               "same reference: the floor each metric reaches at this n (FD is biased upward at "
               "small n, KID is not). Memorized: share of samples closer to a training image "
               "than 99% of the reference images are.")
    return Table("sample_quality", "Sample quality (offline features)", data, display,
                 ("l", "l") + ("r",) * 10, caption)


def bits_vs_quality(metrics: pd.DataFrame, summary: pd.DataFrame) -> Rendered:
    name, title = "bits_vs_sample_quality", "Likelihood vs sample quality"
    data = quality_frame(metrics, summary)
    models = data[(data["quality_set"] == "samples") & data["test_bits_per_dim"].notna()] \
        if len(data) else data
    if not len(models):
        return skipped(name, title, "no sample_quality rows with test bits/dim (eval."
                                    "quality_samples > 0 in a cell that samples)")
    floor = data[data["quality_set"] == "real_vs_real"]
    fig = Figure(figsize=FIGSIZE)
    left, right = fig.subplots(1, 2)
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    depths = sorted(models["effective_depth"].dropna().unique())
    for _, row in models.iterrows():
        depth = row["effective_depth"]
        swept = depth is not None and not pd.isna(depth)
        color = cmap(0.9 * depths.index(depth) / max(len(depths) - 1, 1)) if swept else "black"
        label = f"{row['model_label']} G={int(depth)}" if swept else row["model_label"]
        marker = "o" if swept else "s"
        left.scatter(row["test_bits_per_dim"], row["fd"], color=color, marker=marker, s=28,
                     label=label)
        right.scatter(row["test_bits_per_dim"], row["precision"], color=color, marker=marker,
                      s=28)
        right.scatter(row["test_bits_per_dim"], row["recall"], facecolors="none",
                      edgecolors=color, marker=marker, s=28)
    if len(floor):
        left.axhline(floor["fd"].iloc[0], color="0.5", linestyle=":", linewidth=1,
                     label="real vs real (floor)")
        for metric, style in (("precision", ":"), ("recall", "--")):
            right.axhline(floor[metric].iloc[0], color="0.5", linestyle=style, linewidth=1)
    left.set_xlabel("test bits/dim (lower = better likelihood)")
    left.set_ylabel("FD (lower = better samples)")
    right.set_xlabel("test bits/dim")
    right.set_ylabel("precision (filled) and recall (open)")
    right.set_ylim(-0.03, 1.03)
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    left.legend(unique.values(), unique.keys(), fontsize=6, loc="best")
    left.set_title("FD against bits/dim", fontsize=8)
    right.set_title("precision / recall against bits/dim", fontsize=8)
    fig.suptitle(title, fontsize=9)
    extractor = ", ".join(sorted(set(models["features"].dropna())))
    caption = (f"Features: {extractor}; n = {int(models['n_samples'].iloc[0]):,} samples per "
               "model against the first test images. Dotted lines: the real-vs-real floor "
               "(the next test images scored the same way). If likelihood and sample quality "
               "agreed, the points would fall on a rising line on the left; Theis et al. (2016) "
               "show they need not.")
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, "the evaluated weights' sample set")
