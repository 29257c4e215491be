"""The report's figures, each a pure function of result rows returning a `Rendered`.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot figures): no GUI window, no
global figure registry, nothing left open. The per-layer heatmaps are drawn by seaborn onto such a
figure's axes. A figure whose data is absent comes back with `figure=None`
and the reason in `note`; the report lists it as skipped.

Depth figures follow the VDVAE depth ablation (Child 2021, Section 5.2: bits/dim against
effective stochastic depth at fixed parameters).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report.format import fmt_fixed, fmt_percent, fmt_ratio
from harness.report import roles
from harness.report.tables import sampling_rows, sort_cells, speed_ratios

FIGSIZE = (7.5, 4.6)
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.dpi": 110, "image.cmap": "viridis",
}
SEED_MARKERS = ("o", "s", "^", "v", "D", "P", "X")
CODEC_STYLES = (":", "-.", (0, (5, 2, 1, 2, 1, 2)), (0, (1, 4)))  # one dash pattern per codec


@dataclass
class Rendered:
    name: str  # PNG file stem
    title: str
    figure: Figure | None  # None: skipped
    note: str  # caption (weights, caveats), or why the figure was skipped
    weights: str = ""  # which weights the plotted numbers come from


def skipped(name: str, title: str, reason: str) -> Rendered:
    return Rendered(name, title, None, reason)


def _finish(fig: Figure, caption: str) -> None:
    """Lay out the axes above a small caption strip (the PNG then carries its own caption)."""
    wrapped = textwrap.fill(caption, width=150)
    lines = wrapped.count("\n") + 1
    bottom = min(0.04 + 0.03 * lines, 0.3)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.text(0.01, 0.01, wrapped, fontsize=6.5, va="bottom", ha="left", color="0.25")


def _log2_depth_axis(ax, depths) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted({int(d) for d in depths})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()


def _weights_label(values) -> str:
    kinds = sorted({v for v in values if isinstance(v, str)})
    if not kinds:
        return "weights not recorded"
    return f"weights: {kinds[0]}" if len(kinds) == 1 else \
        f"weights: mixed ({', '.join(kinds)}; see the summary table)"


def _reference_lines(ax, summary: pd.DataFrame, plotted: list[float]) -> list[str]:
    """Models without an effective depth and codec cells as horizontal lines; codecs only when
    near the plotted range. Returns notes for codecs left off."""
    notes = []
    others = roles.other_models(summary)
    for (_, row), label in zip(others.iterrows(), roles.labels(others)):
        ax.axhline(row["test_bits_per_dim"], color="black", linestyle="--", linewidth=1,
                   label=f"{label} {row['cell']} ({fmt_fixed(row['test_bits_per_dim'])})")
        plotted = plotted + [row["test_bits_per_dim"]]
    low, high = min(plotted), max(plotted)
    span = max(high - low, 0.1)
    for index, (_, row) in enumerate(roles.codecs(summary).iterrows()):
        value = row["test_bits_per_dim"]
        if low - 2 * span <= value <= high + 2 * span:
            ax.axhline(value, color="0.5", linestyle=CODEC_STYLES[index % len(CODEC_STYLES)],
                       linewidth=1,
                       label=f"codec {row['cell']} ({fmt_fixed(value)})")
        else:
            notes.append(f"codec {row['cell']} at {fmt_fixed(value)} bits/dim is off scale")
    return notes


def bits_vs_depth(summary: pd.DataFrame, suffix: str = "",
                  metrics: pd.DataFrame | None = None) -> Rendered:
    name, title = f"bits_vs_depth{suffix}", "Test bits/dim vs effective stochastic depth"
    swept_cells = roles.evaluated(roles.depth_cells(summary))
    if swept_cells["effective_depth"].nunique() < 2:
        return skipped(name, title, "needs test bits/dim at two or more effective depths "
                                    "(no depth sweep in these results)")
    swept = roles.depth_label(summary)
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    seeds = sorted(swept_cells["seed"].fillna(0).astype(int).unique())
    for index, seed in enumerate(seeds):
        rows = swept_cells[swept_cells["seed"].fillna(0).astype(int) == seed].sort_values("effective_depth")
        jitter = 1.0 + 0.04 * (index - (len(seeds) - 1) / 2)  # separate seeds on a log axis
        ax.errorbar(rows["effective_depth"] * jitter, rows["test_bits_per_dim"],
                    yerr=rows["test_bits_per_dim_ci95"].fillna(0), capsize=3, linestyle="none",
                    marker=SEED_MARKERS[index % len(SEED_MARKERS)], markersize=5, alpha=0.8,
                    label=f"{swept} seed {seed}")
    means = swept_cells.groupby("effective_depth")["test_bits_per_dim"].mean()
    ax.plot(means.index, means.values, color="black", marker="_", markersize=14, linewidth=1.2,
            label="mean over seeds")
    files = _codec_points(ax, swept_cells, metrics)
    notes = _reference_lines(ax, summary, list(swept_cells["test_bits_per_dim"]) + files)
    _log2_depth_axis(ax, means.index)
    ax.set_xlabel("effective stochastic depth G (groups of top-down layers)")
    ax.set_ylabel("test bits/dim (± 95% CI over images)")
    ax.set_title(title)
    _legend_right(ax)
    caption = (f"{_weights_label(swept_cells['weights'])}. Points: one cell each (seeds offset "
               "sideways); line: mean over seeds; unpaired CIs overstate the uncertainty of "
               "differences, see the paired figure. " + "; ".join(notes))
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, _weights_label(swept_cells["weights"]))


def _codec_points(ax, cells: pd.DataFrame, metrics: pd.DataFrame | None) -> list[float]:
    """Each depth cell's real lossless file (codec_bits_per_dim, its first test images) as an
    open marker beside its bits/dim; returns the values drawn."""
    if metrics is None or not len(metrics):
        return []
    rows = metrics[(metrics["metric"] == "codec_bits_per_dim")
                   & metrics["cell"].isin(cells["cell"]) & metrics["value"].notna()]
    if not len(rows):
        return []
    depth = cells.set_index("cell")["effective_depth"]
    x = [depth[c] * 1.08 for c in rows["cell"]]
    n = int(rows["n_images"].max()) if "n_images" in rows and rows["n_images"].notna().any() \
        else 0
    ax.scatter(x, rows["value"], marker="D", facecolors="none", edgecolors="tab:red", s=22,
               label=f"real file, first {n:,} test images (lossless codec)")
    return list(rows["value"])


def paired_differences(paired: pd.DataFrame, weights: str | None, suffix: str = "") -> Rendered:
    name = f"paired_differences{suffix}"
    title = "Paired difference vs the deepest model, same test images"
    if not len(paired):
        return skipped(name, title, "needs per-image test bits/dim of two or more depths "
                                    "(cells/<cell>/per_image_test_bits_per_dim_<weights>.npy)")
    if weights not in set(paired["weights"]):
        weights = sorted(paired["weights"])[0]
    rows = paired[paired["weights"] == weights]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    seeds = sorted(rows["seed"].fillna(0).astype(int).unique())
    for index, seed in enumerate(seeds):
        own = rows[rows["seed"].fillna(0).astype(int) == seed].sort_values("effective_depth")
        jitter = 1.0 + 0.04 * (index - (len(seeds) - 1) / 2)
        x = own["effective_depth"] * jitter
        ax.errorbar(x, own["mean_diff_bits_per_dim"], yerr=own["ci95_bits_per_dim"], capsize=3,
                    linestyle="none", marker=SEED_MARKERS[index % len(SEED_MARKERS)],
                    markersize=5, label=f"seed {seed} (vs {own['reference_cell'].iloc[0]})")
        for xi, yi, fraction in zip(x, own["mean_diff_bits_per_dim"],
                                    own["fraction_deeper_better"]):
            ax.annotate(fmt_percent(fraction, 0), (xi, yi), textcoords="offset points",
                        xytext=(7, 4 - 9 * index), fontsize=6.5, color=f"C{index}")
    deepest = int(rows["reference_depth"].max())
    means = rows.groupby("effective_depth")["mean_diff_bits_per_dim"].mean()
    means.loc[deepest] = 0.0  # the reference itself
    means = means.sort_index()
    ax.plot(means.index, means.values, color="black", marker="_", markersize=14, linewidth=1.2,
            label="mean over seeds")
    ax.plot([deepest], [0.0], marker="*", markersize=11, color="black", linestyle="none",
            label=f"reference G={deepest}")
    ax.axhline(0.0, color="0.4", linewidth=0.8)
    _log2_depth_axis(ax, means.index)
    ax.set_xlabel("effective stochastic depth G")
    ax.set_ylabel(f"bits/dim: G minus G={deepest} (± 95% CI)")
    ax.set_title(f"{title} (N = {int(rows['n_images'].iloc[0]):,})")
    _legend_right(ax)
    others = sorted(set(paired["weights"]) - {weights})
    caption = (f"weights: {weights}. Mean over images of (shallower minus deepest) per-image "
               "bits/dim, ± 1.96·sd/√N; positive = deeper is better. Labels: share of images on "
               "which the deeper model is better."
               + (f" Pairs for {', '.join(others)} weights are in the table." if others else ""))
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, f"weights: {weights}")


def bits_vs_params(summary: pd.DataFrame, suffix: str = "") -> Rendered:
    name, title = f"bits_vs_params{suffix}", "Test bits/dim vs parameters"
    models = roles.evaluated(summary[~roles.is_codec(summary) & summary["params"].notna()])
    if not len(models):
        return skipped(name, title, "no model cell has both test bits/dim and a parameter count")
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    names = roles.labels(models)
    depths = sorted(models["effective_depth"].dropna().unique())
    colors = _depth_colors(depths)
    # Cells sharing a parameter count (a depth sweep at fixed parameters) are spread by a small
    # multiplicative offset in a fixed order, deepest last; the tick marks the true count.
    groups = list(models.groupby(["params"], sort=True))
    for (params,), group in groups:
        members = group.sort_values(["effective_depth", "seed"], na_position="last")
        n = len(members)
        for index, (row_index, row) in enumerate(members.iterrows()):
            offset = 1.0 + 0.01 * (index - (n - 1) / 2) if n > 1 else 1.0
            depth = row["effective_depth"]
            swept = not pd.isna(depth)
            label = (f"{names[row_index]} G={int(depth)}" if swept else
                     f"{names[row_index]} {row['cell']}")
            ax.errorbar([row["params"] * offset], [row["test_bits_per_dim"]],
                        yerr=[0.0 if pd.isna(row["test_bits_per_dim_ci95"])
                              else row["test_bits_per_dim_ci95"]], linestyle="none",
                        marker="o" if swept else "s", capsize=3,
                        color=colors[depth] if swept else "black", label=label)
    handles, legend_labels = ax.get_legend_handles_labels()
    unique = dict(zip(legend_labels, handles))
    codecs = roles.codecs(summary)
    notes = []
    plotted = list(models["test_bits_per_dim"])
    span = max(max(plotted) - min(plotted), 0.1)
    for index, (_, row) in enumerate(codecs.iterrows()):
        if min(plotted) - 2 * span <= row["test_bits_per_dim"] <= max(plotted) + 2 * span:
            line = ax.axhline(row["test_bits_per_dim"], color="0.5", linewidth=1,
                              linestyle=CODEC_STYLES[index % len(CODEC_STYLES)])
            unique[f"codec {row['cell']} (no parameters)"] = line
        else:
            notes.append(f"codec {row['cell']} off scale")
    ax.set_xscale("log")
    ticks = sorted({int(p) for p in models["params"]})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:,}" for t in ticks], rotation=30, ha="right")
    ax.minorticks_off()
    ax.margins(x=0.3)
    ax.set_xlabel("parameters (cells with the same count are spread ±1% around its tick)")
    ax.set_ylabel("test bits/dim (± 95% CI)")
    ax.set_title(title)
    ax.legend(list(unique.values()), list(unique.keys()), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    caption = (f"{_weights_label(models['weights'])}. The depth ablation holds parameters "
               "fixed, so depths share one parameter count; they are drawn side by side in "
               "order of depth around its tick, which gives the exact count. " + "; ".join(notes))
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, _weights_label(models["weights"]))


def _legend_right(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _depth_colors(depths) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(depths) - 1, 1)
    return {d: cmap(0.9 * i / n) for i, d in enumerate(depths)}


def sampling_throughput(metrics: pd.DataFrame, summary: pd.DataFrame | None = None) -> Rendered:
    name, title = "sampling_throughput", "Sampling throughput vs resolution"
    rows = sampling_rows(metrics, summary)
    rows = rows[rows["image_size"].notna()]
    if not len(rows):
        return skipped(name, title, "no sample_images_per_s rows with image_size in "
                                    "metrics.jsonl")
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    markers = ("o", "s", "^", "v", "D", "P")
    for index, ((label, method, batch), group) in enumerate(
            rows.groupby(["model_label", "method", "batch_size"], dropna=False)):
        group = group.sort_values("image_size")
        batch_text = "" if pd.isna(batch) else f", batch {int(batch)}"
        ax.plot(group["image_size"], group["images_per_s"], marker=markers[index % len(markers)],
                label=f"{label} {method}{batch_text}")
    ratios = speed_ratios(rows)
    for _, ratio in ratios.iterrows():
        if ratio["fastest_speedup"] > 1.0 + 1e-9:
            ax.annotate(f"{ratio['fastest']} {fmt_ratio(ratio['fastest_speedup'])} faster",
                        (ratio["image_size"], ratio["images_per_s"]), textcoords="offset points",
                        xytext=(6, 6), fontsize=6.5)
    ax.set_yscale("log")
    sizes = sorted(rows["image_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{int(s)}×{int(s)}" for s in sizes])
    ax.minorticks_off()
    ax.margins(x=0.25, y=0.12)
    ax.set_xlabel("image size")
    ax.set_ylabel("images/s (log scale)")
    ax.set_title(title)
    _legend_right(ax)
    caption = ("Median over cells of each cell's median over timing rounds that agree "
               "(the run's speed phase: one cell at a time, nothing else running), same device. "
               "Annotations: how many times faster the fastest sampler at that resolution and "
               "batch is (an autoregressive model's naive sampler runs one network pass per "
               "sub-pixel; its cached one: Ramachandran et al. 2017)."
               + ("" if len(ratios) else " No resolution has two samplers: no ratio."))
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, "timing only (no likelihood)")


def _layer_matrix(metrics: pd.DataFrame, summary: pd.DataFrame, metric: str,
                  weights: str | None) -> tuple[pd.DataFrame, str]:
    """(cells × layers) mean of `metric`, test split preferred, the given weights preferred."""
    rows = metrics[(metrics["metric"] == metric) & metrics["layer"].notna()
                   & metrics["value"].notna()]
    if not len(rows):
        return pd.DataFrame(), ""
    for split in ("test", "validation", "train"):
        if (rows["split"] == split).any():
            rows = rows[rows["split"] == split]
            break
    used = "not recorded"
    if rows["weights"].notna().any():
        used = weights if weights in set(rows["weights"]) else sorted(rows["weights"].dropna())[0]
        rows = rows[rows["weights"] == used]
    matrix = rows.pivot_table(index="cell", columns="layer", values="value", aggfunc="mean")
    order = [c for c in sort_cells(summary)["cell"] if c in matrix.index]
    order += sorted(set(matrix.index) - set(order))
    matrix = matrix.loc[order]
    matrix.columns = [int(c) for c in matrix.columns]
    split = rows["split"].dropna().iloc[0] if rows["split"].notna().any() else "unknown split"
    return matrix, f"{split} split, weights: {used}"


def _cell_labels(summary: pd.DataFrame, cells) -> list[str]:
    by_cell = summary.set_index("cell")
    labels = []
    for cell in cells:
        depth = by_cell["effective_depth"].get(cell) if cell in by_cell.index else None
        labels.append(cell if depth is None or pd.isna(depth) else f"{cell} (G={int(depth)})")
    return labels


def layer_heatmap(metrics: pd.DataFrame, summary: pd.DataFrame, weights: str | None,
                  metric: str) -> Rendered:
    """KL per layer (`kl_bits_per_dim`) or active units per layer (`active_units`)."""
    is_kl = metric == "kl_bits_per_dim"
    name = "kl_per_layer" if is_kl else "active_units_per_layer"
    title = ("KL per top-down layer (bits/dim): which layers carry information" if is_kl
             else "Active latent units per top-down layer")
    matrix, used = _layer_matrix(metrics, summary, metric, weights)
    if matrix.empty:
        return skipped(name, title, f"no {metric} rows with a layer in metrics.jsonl")
    import seaborn as sns  # here, not at import: it loads pyplot, which only this figure needs

    height = min(1.6 + 0.28 * len(matrix), 9.0)
    fig = Figure(figsize=(FIGSIZE[0], max(height, 3.0)))
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)  # (cells, layers)
    # seaborn leaves missing cells blank and picks each number's colour from the luminance of
    # the colour under it, so the numbers stay legible on any colormap.
    sns.heatmap(values, ax=ax, cmap="magma_r" if is_kl else "viridis",
                annot=values.size <= 400, fmt=".2f" if is_kl else ".0f",
                annot_kws={"fontsize": 5.5},
                xticklabels=[str(c) for c in matrix.columns],
                yticklabels=_cell_labels(summary, matrix.index),
                cbar_kws={"label": "KL bits/dim" if is_kl else "active units", "shrink": 0.9})
    ax.tick_params(axis="y", rotation=0)
    ax.grid(False)
    ax.set_xlabel("top-down layer (0 = first block after the top bias)")
    ax.set_title(title)
    caption = (f"{used}. " + ("Per-layer KL(q‖p) in bits per image dimension; near-zero rows of "
                              "a layer mean it is unused." if is_kl else
                              "Units with Cov_x(E_q[z]) > 0.01."))
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, used)


def training_curves(summary: pd.DataFrame, logs: dict[str, pd.DataFrame]) -> Rendered:
    name, title = "training_curves", "Training loss (bits/dim) vs step"
    curves = {}
    for cell, log in logs.items():
        if {"type", "step", "loss_bits_per_dim"} <= set(log.columns):
            train = log[log["type"] == "train"][["step", "loss_bits_per_dim"]]
            train = train.apply(pd.to_numeric, errors="coerce").dropna().sort_values("step")
            if len(train):
                curves[cell] = train
    if not curves:
        return skipped(name, title, "no cells/*/train_log.jsonl with train rows")
    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1]))
    full, zoom = fig.subplots(1, 2)
    by_cell = summary.set_index("cell")
    depths = sorted(roles.depth_cells(summary)["effective_depth"].dropna().unique())
    colors = _depth_colors(depths)
    order = [c for c in sort_cells(summary)["cell"] if c in curves]
    order += sorted(set(curves) - set(order))
    late_losses = []
    for cell in order:
        curve = curves[cell]
        row = by_cell.loc[cell] if cell in by_cell.index else None
        depth = None if row is None else row["effective_depth"]
        seed = 0 if row is None or pd.isna(row["seed"]) else int(row["seed"])
        color = colors.get(depth, "black") if depth is not None and not pd.isna(depth) \
            else "black"
        style = ("-", "--", ":", "-.")[seed % 4]
        for ax in (full, zoom):
            ax.plot(curve["step"], curve["loss_bits_per_dim"], color=color, linestyle=style,
                    linewidth=1.1, label=cell)
        half = curve[curve["step"] >= curve["step"].max() / 2]
        late_losses += list(half["loss_bits_per_dim"])
    start = min(float(curves[c]["step"].max()) for c in curves) / 2
    zoom.set_xlim(start, max(float(c["step"].max()) for c in curves.values()))
    low, high = min(late_losses), max(late_losses)
    margin = max(high - low, 0.01) * 0.1
    zoom.set_ylim(low - margin, high + margin)
    full.set_title(title)
    zoom.set_title("second half of training (zoom)")
    for ax in (full, zoom):
        ax.set_xlabel("step")
    full.set_ylabel("training loss, bits/dim")
    full.legend(loc="upper right", ncol=1 if len(order) <= 8 else 2)
    caption = ("Training loss of the current (raw) weights, one line per cell; colour = "
               "effective depth (viridis; black = a model without one), line style = seed.")
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, "raw (current) weights during training")


def sample_grids(summary: pd.DataFrame, samples: dict[str, object], notes: list[str],
                 per_figure: int = 12) -> list[Rendered]:
    """`cells/*/samples.png` side by side, at most `per_figure` cells per figure."""
    from PIL import Image

    title = "Samples"
    order = [c for c in sort_cells(summary)["cell"] if c in samples]
    order += sorted(set(samples) - set(order))
    images = {}
    for cell in order:
        try:
            with Image.open(samples[cell]) as image:
                images[cell] = np.asarray(image.convert("L") if image.mode in ("L", "I", "1")
                                          else image.convert("RGB"))
        except (OSError, ValueError) as error:
            notes.append(f"cells/{cell}/samples.png unreadable ({error}); not shown")
    if not images:
        return [skipped("samples", title, "no cells/*/samples.png")]
    cells = list(images)
    chunks = [cells[i:i + per_figure] for i in range(0, len(cells), per_figure)]
    rendered = []
    for index, chunk in enumerate(chunks):
        columns = min(4, len(chunk))
        rows = math.ceil(len(chunk) / columns)
        fig = Figure(figsize=(FIGSIZE[0], 0.8 + 2.2 * rows))
        axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
        for ax, cell in zip(axes, chunk):
            image = images[cell]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_title(_cell_labels(summary, [cell])[0], fontsize=7)
        for ax in axes:
            ax.axis("off")
        name = "samples" if len(chunks) == 1 else f"samples_{index + 1}"
        caption = ("Sample grids as written by each cell (cells/<cell>/samples.png), drawn with "
                   "each family's fastest sampler from the weights the cell evaluated (EMA when "
                   "evaluated); titles give the cell and its effective depth.")
        fig.suptitle(title if len(chunks) == 1 else f"{title} ({index + 1}/{len(chunks)})")
        _finish(fig, caption)
        # tight_layout leaves no room for the titles of a second row of square images with
        # their axes off: give every row its title's height back.
        fig.subplots_adjust(hspace=0.28)
        rendered.append(Rendered(name, title, fig, caption, "as recorded by each cell"))
    return rendered
