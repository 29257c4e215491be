"""Report building blocks: paired differences by hand, reference choice, table writers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.report.format import (
    Table, fmt_int, fmt_rate, fmt_ratio, fmt_seconds, fmt_si, latex_escape, to_csv, to_latex,
    to_markdown,
)
from harness.report.stats import choose_reference, paired_difference


def test_paired_difference_small_example_by_hand():
    # d = [0.1, -0.05, 0.1, 0.1]: mean 0.0625; deviations 0.0375, -0.1125, 0.0375, 0.0375;
    # sum of squares 0.016875, / (N-1) = 0.005625, sd 0.075; CI = 1.96 * 0.075 / 2 = 0.0735.
    shallow = [3.0, 3.2, 3.4, 3.1]
    deep = [2.9, 3.25, 3.3, 3.0]
    result = paired_difference(shallow, deep)
    assert result.mean_bits_per_dim == pytest.approx(0.0625, abs=1e-12)
    assert result.ci95_bits_per_dim == pytest.approx(0.0735, abs=1e-12)
    assert result.fraction_deeper_better == 0.75
    assert result.n_images == 4


def test_paired_difference_is_antisymmetric_and_ties_are_not_wins():
    a, b = [1.0, 2.0, 3.0], [1.0, 1.5, 3.5]
    forward, backward = paired_difference(a, b), paired_difference(b, a)
    assert forward.mean_bits_per_dim == pytest.approx(-backward.mean_bits_per_dim)
    assert forward.ci95_bits_per_dim == pytest.approx(backward.ci95_bits_per_dim)
    assert forward.fraction_deeper_better == pytest.approx(1 / 3)  # the tie counts for neither
    assert backward.fraction_deeper_better == pytest.approx(1 / 3)


def test_choose_reference_same_seed_then_seed_zero_then_lowest():
    deepest = {0: "g14_s0", 1: "g14_s1"}
    assert choose_reference(1, deepest) == ("g14_s1", "same seed")
    assert choose_reference(5, deepest) == ("g14_s0", "seed-0 fallback")
    assert choose_reference(5, {3: "g14_s3", 2: "g14_s2"}) == ("g14_s2", "seed-2 fallback")
    assert choose_reference(0, {}) is None


def _table() -> Table:
    data = pd.DataFrame({"name": ["a|b", "x_y & 50%"], "value": [1.5, math.nan]})
    display = pd.DataFrame({"name": data["name"], "value ± CI": ["1.500 ± 0.010", "–"]})
    return Table("demo", "Demo_table", data, display, ("l", "r"), "Caption with 5% and #1.")


def test_markdown_writer_escapes_pipes_and_aligns_numbers():
    assert to_markdown(_table()) == (
        "| name | value ± CI |\n"
        "|:---|---:|\n"
        "| a\\|b | 1.500 ± 0.010 |\n"
        "| x_y & 50% | – |\n")


def test_latex_writer_escapes_and_uses_booktabs():
    tex = to_latex(_table())
    assert r"\begin{tabular}{lr}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"x\_y \& 50\% & -- \\" in tex
    assert r"a|b & 1.500 $\pm$ 0.010 \\" in tex
    assert r"\caption{Demo\_table. Caption with 5\% and \#1.}" in tex
    assert latex_escape("{~^\\}") == r"\{\textasciitilde{}\textasciicircum{}\textbackslash{}\}"


def test_csv_writer_keeps_raw_values_and_empty_for_missing():
    assert to_csv(_table()) == 'name,value\na|b,1.5\nx_y & 50%,\n'


def test_number_formats():
    assert fmt_int(402735.0) == "402,735" and fmt_int(None) == "–"
    assert fmt_si(2.5e8) == "250 M" and fmt_si(1.234e9) == "1.23 G" and fmt_si(12) == "12"
    assert fmt_rate(3400.0) == "3,400" and fmt_rate(0.5) == "0.5" and fmt_rate(70.83) == "70.8"
    assert fmt_ratio(1700.0) == "1,700×" and fmt_ratio(70.8333) == "70.8×"
    assert fmt_seconds(3599) == "59 min 59 s" and fmt_seconds(7384) == "2 h 03 min"
    assert fmt_seconds(12.34) == "12.3 s"


def test_a_cell_or_experiment_name_with_a_trailing_newline_is_not_a_safe_folder_name():
    from harness.report.load import is_safe_name

    assert is_safe_name("vdvae_g01_s0") and is_safe_name("codec_png")
    for name in ("vdvae\n", "x\n", "../x", "a..b", "", ".hidden", "a/b"):
        assert not is_safe_name(name), repr(name)


def _heatmap_inputs(values_by_cell: dict[str, list[float]], metric: str = "kl_bits_per_dim"):
    """metrics rows of `metric` per layer (NaN = no row for that layer) and a summary of the
    cells, each a VDVAE at the depth in its name (`g<depth>`)."""
    rows = [{"cell": cell, "metric": metric, "layer": layer, "value": value, "split": "test",
             "weights": "raw"}
            for cell, values in values_by_cell.items() for layer, value in enumerate(values)
            if not math.isnan(value)]
    summary = pd.DataFrame({"cell": list(values_by_cell), "model": "vdvae", "kind": "train",
                            "dataset": "fashion_mnist", "seed": 0.0,
                            "effective_depth": [float(c[1:]) for c in values_by_cell]})
    return pd.DataFrame(rows), summary


def test_layer_heatmap_numbers_legible_and_missing_layers_blank():
    from matplotlib.colors import to_rgb

    from harness.report.figures import layer_heatmap

    metrics, summary = _heatmap_inputs({"g1": [0.01, 0.5, 1.2], "g14": [0.02, 0.9, math.nan]})
    rendered = layer_heatmap(metrics, summary, "raw", "kl_bits_per_dim")
    ax = rendered.figure.axes[0]
    colour = {text.get_text(): sum(to_rgb(text.get_color())) / 3 for text in ax.texts}
    # One number per recorded (cell, layer); g14's missing layer 2 is blank, not "nan".
    assert sorted(colour) == ["0.01", "0.02", "0.50", "0.90", "1.20"]
    # magma_r runs from near white (low KL) to near black (high KL): the text flips with it.
    assert colour["0.01"] < 0.5 < colour["1.20"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["g1 (G=1)", "g14 (G=14)"]
    assert "test split, weights: raw" in rendered.note


def test_layer_heatmap_active_units_whole_numbers_and_large_grids_unlabelled():
    from harness.report.figures import layer_heatmap

    metrics, summary = _heatmap_inputs({"g1": [0.0, 3.0, 16.0]}, metric="active_units")
    ax = layer_heatmap(metrics, summary, "raw", "active_units").figure.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "16", "3"]
    # Past 400 cells the numbers would not fit: colour only.
    metrics, summary = _heatmap_inputs({f"g{d}": [0.1] * 81 for d in range(1, 6)})
    ax = layer_heatmap(metrics, summary, "raw", "kl_bits_per_dim").figure.axes[0]
    assert len(ax.texts) == 0


def test_layer_heatmap_without_rows_is_skipped_with_the_reason():
    from harness.report.figures import layer_heatmap

    metrics, summary = _heatmap_inputs({"g1": [0.1, 0.2]})
    rendered = layer_heatmap(metrics, summary, "raw", "active_units")
    assert rendered.figure is None
    assert "no active_units rows" in rendered.note


def test_sample_grid_titles_of_every_row_are_clear_of_the_images(tmp_path):
    """Eight cells in two rows: each panel's title must not overlap any image, so the second
    row's cells can be told apart (their titles were hidden under the first row's images)."""
    import numpy as np
    from PIL import Image

    from harness.report.figures import sample_grids

    cells = [f"vdvae_g{g}_s0" for g in (1, 2, 4, 7, 14)] + ["vdvae_g1_s1", "vdvae_g14_s1",
                                                           "pixelcnn_s0"]
    samples = {}
    for index, cell in enumerate(cells):
        samples[cell] = tmp_path / f"{cell}.png"
        Image.fromarray(np.full((62, 62), 20 * index, dtype=np.uint8)).save(samples[cell])
    summary = pd.DataFrame({"cell": cells, "model": ["vdvae"] * 7 + ["pixelcnn"],
                            "dataset": ["d"] * 8, "effective_depth": [1, 2, 4, 7, 14, 1, 14, None],
                            "seed": [0] * 5 + [1, 1, 0]})
    rendered = sample_grids(summary, samples, [])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = rendered[0].figure
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 8
    # The drawn image of each panel (square, inside its axes box).
    images = [ax.images[0].get_window_extent(renderer) for ax in axes]
    for ax in axes:
        title = ax.title.get_window_extent(renderer)
        for box in images:
            assert not title.overlaps(box), ax.get_title()
