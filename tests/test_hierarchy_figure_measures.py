"""The numbers printed under the hierarchy figures' columns: how much each resolution still
changes a generated image, and how much the resolutions below r still decide."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.report import figures_latents as fl
from harness.report.load import load_results

TESTS = Path(__file__).resolve().parent


def _images(rng, *shape):
    return rng.integers(0, 256, size=shape + (1, 4, 4), dtype=np.uint8)


def test_column_change_is_zero_for_repeated_columns_and_one_for_black_to_white():
    same = np.repeat(_images(np.random.default_rng(0), 3, 1), 4, axis=1)
    change = fl.column_change(same)
    assert np.isnan(change[0]) and np.all(change[1:] == 0)
    flip = np.zeros((2, 3, 1, 4, 4), np.uint8)
    flip[:, 1] = 255  # black -> white -> black
    assert fl.column_change(flip)[1:] == pytest.approx([1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(2, 5))
def test_column_change_is_the_mean_absolute_step_between_neighbours(seed, rows, cols):
    images = _images(np.random.default_rng(seed), rows, cols)
    change = fl.column_change(images)
    for j in range(1, cols):
        step = np.abs(images[:, j].astype(float) - images[:, j - 1].astype(float)) / 255.0
        assert change[j] == pytest.approx(step.mean(), abs=1e-12)


def test_redraw_spread_is_zero_when_redraws_agree_and_one_half_for_black_and_white():
    agree = np.repeat(_images(np.random.default_rng(1), 2, 3, 1), 4, axis=2)
    assert fl.redraw_spread(agree) == pytest.approx([0, 0, 0], abs=1e-12)
    split = np.zeros((2, 3, 2, 1, 4, 4), np.uint8)
    split[:, :, 1] = 255  # two redraws, one black, one white: population std 0.5
    assert fl.redraw_spread(split) == pytest.approx([0.5, 0.5, 0.5])


def test_redraw_spread_averages_over_images_not_across_them():
    rng = np.random.default_rng(2)
    constant = np.repeat(_images(rng, 3, 2, 1), 3, axis=2)  # every image redraws identically
    # The images differ from each other, but that is not a redraw's spread.
    assert fl.redraw_spread(constant) == pytest.approx([0, 0], abs=1e-12)


def _fixture_results(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "report_fixture_builder", TESTS / "fixtures" / "report" / "builder.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return load_results(builder.build_results(tmp_path / "results"))


def test_figures_print_the_measures_under_their_columns(tmp_path):
    results = _fixture_results(tmp_path)
    generation = fl.generation_by_resolution(results)
    cell, _, index = fl._cells_with_figures(results)[0]
    images, _ = fl._load(results, cell, index, "generation_by_resolution")
    labels = [t.get_text() for t in generation.figure.axes[0].get_xticklabels()]
    expected = fl.column_change(images)
    assert labels[0] == "1×1"  # the first column has nothing before it
    assert labels[1:] == [f"{c}\n{100 * v:.1f}%" for c, v in zip(["7×7", "14×14", "28×28"],
                                                            expected[1:])]
    assert "% of the 0-255 range" in generation.note

    fixed = fl.fixed_top_resampled_below(results)
    images, _ = fl._load(results, cell, index, "fixed_top_resampled_below")
    labels = [t.get_text() for t in fixed.figure.axes[0].get_xticklabels()]
    spread = fl.redraw_spread(images)
    assert labels[0] == "input"
    assert labels[1:] == [f"≤{r}\n{100 * v:.1f}%" for r, v in zip([1, 7, 14, 28], spread)]
    assert "standard deviation across redraws" in fixed.note
