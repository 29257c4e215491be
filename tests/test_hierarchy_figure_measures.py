"""The measures printed under the hierarchy figures' columns: how much each resolution still
changes a generated image, and how much the resolutions below r still decide. The printed
labels themselves are checked in tests/test_report.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.report import figures_latents as fl


def _images(rng, *shape):
    return rng.integers(0, 256, size=shape + (1, 4, 4), dtype=np.uint8)


def test_column_change_is_zero_for_repeated_columns_and_one_for_black_to_white():
    same = np.repeat(_images(np.random.default_rng(0), 3, 1), 4, axis=1)
    change = fl.column_change(same)
    assert len(change) == 3 and np.all(change == 0)
    flip = np.zeros((2, 3, 1, 4, 4), np.uint8)
    flip[:, 1] = 255  # black -> white -> black
    assert fl.column_change(flip) == pytest.approx([1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(2, 5))
def test_column_change_is_the_mean_absolute_step_between_neighbours(seed, rows, cols):
    images = _images(np.random.default_rng(seed), rows, cols)
    change = fl.column_change(images)
    assert len(change) == cols - 1
    for j in range(1, cols):
        step = np.abs(images[:, j].astype(float) - images[:, j - 1].astype(float)) / 255.0
        assert change[j - 1] == pytest.approx(step.mean(), abs=1e-12)


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
