"""The hierarchy figures (Child 2021, Section 5.2 and Figure 1), from what the hierarchy
studies saved: `cells/<cell>/hierarchy/*.npy` with `figures.json` (harness.engine.studies.
hierarchy_figures) and the `rate_*_at_resolution` rows (bits_by_resolution). A figure appears
where a study wrote its data; otherwise it is skipped with the reason."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report import roles
from harness.report.figures import FIGSIZE, Rendered, _finish, _legend_right, skipped
from harness.report.format import fmt_fixed
from harness.report.load import Results
from harness.report.tables import sort_cells

MAX_PANELS = 5  # cells side by side in one figure


def _mosaic(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 (rows, cols, C, H, W) -> (rows·(H+pad)-pad, cols·(W+pad)-pad, C) with white gaps."""
    rows, cols, channels, height, width = images.shape
    canvas = np.full((rows * (height + pad) - pad, cols * (width + pad) - pad, channels), 255,
                     dtype=np.uint8)
    for i in range(rows):
        for j in range(cols):
            top, left = i * (height + pad), j * (width + pad)
            canvas[top:top + height, left:left + width] = images[i, j].transpose(1, 2, 0)
    return canvas


def _show(ax, canvas: np.ndarray, columns: list[str], width: int, pad: int = 2) -> None:
    grey = canvas.shape[-1] == 1
    ax.imshow(canvas[..., 0] if grey else canvas, cmap="gray" if grey else None, vmin=0,
              vmax=255, interpolation="nearest")
    ax.set_xticks([j * (width + pad) + width / 2 - 0.5 for j in range(len(columns))])
    ax.set_xticklabels(columns, fontsize=6.5)
    ax.set_yticks([])
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)


def _cells_with_figures(results: Results) -> list[tuple[str, str, dict]]:
    """(cell, panel title, figures.json) for at most MAX_PANELS cells: one per effective
    depth (the lowest seed), in depth order, then cells without a depth."""
    chosen, seen = [], set()
    summary = results.summary
    by_cell = summary.set_index("cell")
    for cell in sort_cells(summary)["cell"]:
        files = results.cells.get(cell)
        index_path = files.path / "hierarchy" / "figures.json" if files else None
        if index_path is None or not index_path.is_file():
            continue
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            results.notes.append(f"cells/{cell}/hierarchy/figures.json unreadable ({error})")
            continue
        depth = by_cell["effective_depth"].get(cell)
        key = ("depth", depth) if depth is not None and not pd.isna(depth) else ("cell", cell)
        if key in seen:
            continue
        seen.add(key)
        label = roles.labels(summary[summary["cell"] == cell]).iloc[0]
        title = f"{label} G={int(depth)}" if key[0] == "depth" else f"{label} {cell}"
        chosen.append((cell, title, index))
    return chosen[:MAX_PANELS]


def _load(results: Results, cell: str, index: dict, figure: str, key: str = "images"):
    entry = index.get("figures", {}).get(figure)
    if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
        return None, None
    path = results.cells[cell].path / "hierarchy" / entry[key]
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        results.notes.append(f"cells/{cell}/hierarchy/{entry[key]} unreadable ({error})")
        return None, None
    if array.dtype != np.uint8:
        results.notes.append(f"cells/{cell}/hierarchy/{entry[key]} is not uint8 images")
        return None, None
    return array, entry


def _column_labels(entry: dict) -> list[str]:
    name, values = entry.get("column_name", ""), entry.get("column_values", [])
    if name == "resolution":
        return [f"{int(v)}×{int(v)}" for v in values]
    if name == "temperature":
        return [f"t={v:g}" for v in values]
    return [str(v) for v in values]


def column_change(images: np.ndarray) -> np.ndarray:
    """uint8 (rows, cols, C, H, W) -> (cols - 1,): mean |pixel difference| between each column
    after the first and the one before it, as a fraction of the 0-255 range."""
    pixels = images.astype(np.float64) / 255.0
    return np.abs(np.diff(pixels, axis=1)).mean(axis=(0, 2, 3, 4))


def redraw_spread(images: np.ndarray) -> np.ndarray:
    """uint8 (n_images, cols, redraws, C, H, W) -> (cols,): the standard deviation of each pixel
    across an image's redraws, averaged over pixels and images, as a fraction of 0-255."""
    pixels = images.astype(np.float64) / 255.0
    return pixels.std(axis=2).mean(axis=(0, 2, 3, 4))


def _annotated(columns: list[str], values) -> list[str]:
    """Column labels with a measured fraction, as a percentage, on a second line; the values
    belong to the last len(values) columns. Short enough for five panels side by side."""
    offset = len(columns) - len(values)
    return columns[:offset] + [f"{column}\n{100 * value:.1f}%"
                               for column, value in zip(columns[offset:], values)]


def _panels(results: Results, name: str, title: str, figure: str, caption: str,
            arrange) -> Rendered:
    """One panel per chosen cell; `arrange(images, originals, entry)` -> (rows, cols, C, H, W)
    images and column labels."""
    cells = _cells_with_figures(results)
    loaded = []
    for cell, panel_title, index in cells:
        images, entry = _load(results, cell, index, figure)
        if images is None:
            continue
        originals, _ = _load(results, cell, index, figure, "originals")
        grid, columns = arrange(images, originals, entry)
        loaded.append((panel_title, grid, columns))
    if not loaded:
        return skipped(name, title, "no cell saved hierarchy figures (a family with latents in "
                                    "and out, eval.hierarchy_samples > 0)")
    rows = max(g.shape[0] for _, g, _ in loaded)
    fig = Figure(figsize=(FIGSIZE[0], min(1.4 + 0.42 * rows, 9.0)))
    axes = np.atleast_1d(fig.subplots(1, len(loaded)))
    for ax, (panel_title, grid, columns) in zip(axes, loaded):
        _show(ax, _mosaic(grid), columns, grid.shape[-1])
        ax.set_title(panel_title, fontsize=7.5)
    fig.suptitle(title, fontsize=9)
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, "EMA weights when evaluated, else raw")


def generation_by_resolution(results: Results) -> Rendered:
    return _panels(
        results, "generation_by_resolution", "Generation by resolution",
        "generation_by_resolution",
        "Each row is one sample. Column r: the latents of every block up to resolution r are "
        "drawn from the prior, all later blocks sit at their prior mean; pixels are the "
        "likelihood's mode. Read a row left to right: where the paper's claim holds (global "
        "structure first), the coarse columns already fix the object's shape and class, and "
        "higher resolutions only add texture and detail. Under each column: the mean |pixel "
        "change| from the column before, in % of the 0-255 range, over every saved sample: "
        "how much that resolution's latents still change the image.",
        lambda images, originals, entry: (
            images, _annotated(_column_labels(entry), column_change(images))))


def fixed_top_resampled_below(results: Results) -> Rendered:
    def arrange(images, originals, entry):
        # (n_images, R, redraws, C, H, W): two test images, each a block of redraw rows with
        # the input itself as the first column.
        n_images, n_res, redraws = images.shape[:3]
        take = min(2, n_images)
        rows = []
        for i in range(take):
            for k in range(redraws):
                first = originals[i] if originals is not None else np.full_like(images[i, 0, 0],
                                                                                255)
                rows.append(np.stack([first] + [images[i, j, k] for j in range(n_res)]))
        columns = ["input"] + [f"≤{int(v)}" for v in entry.get("column_values", [])]
        return np.stack(rows), _annotated(columns, redraw_spread(images))
    return _panels(
        results, "fixed_top_resampled_below", "Posterior latents kept up to a resolution, the "
        "rest redrawn", "fixed_top_resampled_below",
        "Rows: two test images, each redrawn several times. Column '≤r': the posterior "
        "latents of the blocks up to resolution r are kept, every later block is drawn from "
        "its prior. What stays the same across a block of rows is decided at or above r; what "
        "varies is left to the finer resolutions. Global-first: keeping only the coarsest "
        "latents keeps the shape; texture differs between redraws. Under each column: the "
        "pixel standard deviation across redraws, in % of the 0-255 range, over every saved "
        "image: what the resolutions below r still decide.", arrange)


def temperature_sweep(results: Results) -> Rendered:
    return _panels(
        results, "temperature_sweep", "Samples at reduced latent temperature",
        "temperature_sweep",
        "Each row is one set of prior noise; column t scales every prior's standard deviation "
        "by t (t=0 would be the prior mean). Low temperatures trade diversity for cleaner, "
        "more typical samples, as in the paper's reduced-temperature figures.",
        lambda images, originals, entry: (images, _column_labels(entry)))


def reconstructions(results: Results) -> Rendered:
    def arrange(images, originals, entry):
        return images, ["input", "reconstruction"]
    return _panels(
        results, "reconstructions", "Test images and their reconstructions", "reconstructions",
        "Left: a test image; right: decode(encode(image)) with every latent a posterior draw, "
        "pixels at the likelihood's mode. Close reconstructions mean the latents carry the "
        "image; the rate they cost is in the bits-by-resolution figure.", arrange)


def bits_by_resolution(metrics: pd.DataFrame, summary: pd.DataFrame,
                       weights: str | None) -> Rendered:
    name, title = "bits_by_resolution", "Where the rate goes: KL share by resolution"
    rows = metrics[(metrics["metric"] == "rate_share_at_resolution") & metrics["value"].notna()]
    if "resolution" not in metrics.columns or not len(rows):
        return skipped(name, title, "no rate_share_at_resolution rows (the bits_by_resolution "
                                    "study of a family with latents and per-layer KL)")
    if rows["weights"].notna().any():
        used = weights if weights in set(rows["weights"]) else sorted(rows["weights"].dropna())[0]
        rows = rows[rows["weights"] == used]
    else:
        used = "not recorded"
    by_cell = summary.set_index("cell")
    rates = metrics[(metrics["metric"] == "rate_bits_per_dim_at_resolution")
                    & metrics["cell"].isin(rows["cell"])]
    if used != "not recorded":
        rates = rates[rates["weights"] == used]
    distortion = metrics[(metrics["metric"] == "distortion_bits_per_dim")
                         & metrics["cell"].isin(rows["cell"])]
    if used != "not recorded":
        distortion = distortion[distortion["weights"] == used]
    share = rows.pivot_table(index="cell", columns="resolution", values="value", aggfunc="mean")
    order = [c for c in sort_cells(summary)["cell"] if c in share.index]
    share = share.loc[order]
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    resolutions = [int(r) for r in share.columns]
    from matplotlib import colormaps
    cmap = colormaps["viridis"]
    bottom = np.zeros(len(share))
    labels = []
    for cell in share.index:
        depth = by_cell["effective_depth"].get(cell)
        labels.append(f"G={int(depth)}" + (f" s{int(by_cell['seed'].get(cell))}"
                                           if not pd.isna(by_cell["seed"].get(cell)) else "")
                      if depth is not None and not pd.isna(depth) else cell)
    x = np.arange(len(share))
    for k, resolution in enumerate(share.columns):
        values = share[resolution].fillna(0).to_numpy()
        ax.bar(x, values, bottom=bottom, color=cmap(0.9 * k / max(len(resolutions) - 1, 1)),
               label=f"{int(resolution)}×{int(resolution)}", width=0.7)
        bottom += values
    total_rate = rates.groupby("cell")["value"].sum()
    dist = distortion.groupby("cell")["value"].mean()
    for xi, cell in zip(x, share.index):
        text = []
        if cell in total_rate.index:
            text.append(f"R {fmt_fixed(total_rate[cell], 3)}")
        if cell in dist.index:
            text.append(f"D {fmt_fixed(dist[cell], 3)}")
        ax.text(xi, 1.01, "\n".join(text), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("share of the rate (KL) carried at each resolution")
    ax.set_title(title)
    _legend_right(ax)
    caption = (f"weights: {used}. Each bar is one cell: the KL of its top-down blocks summed "
               "per resolution, as a share of its total rate; above each bar the rate R and the "
               "distortion D in bits/dim (R + D = the negative ELBO). The quantitative form of "
               "'global first, details later': how much of the information each scale "
               "carries, and whether deeper hierarchies move it.")
    _finish(fig, caption)
    return Rendered(name, title, fig, caption, f"weights: {used}")


def hierarchy_figures(results: Results, weights: str | None) -> list[Rendered]:
    return [bits_by_resolution(results.metrics, results.summary, weights),
            generation_by_resolution(results), fixed_top_resampled_below(results),
            temperature_sweep(results), reconstructions(results)]
