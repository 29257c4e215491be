"""The probability tables the lossless codecs hand the coder (models/coding.py): they are the
models' own likelihoods, tabulated."""

from __future__ import annotations

import math

import pytest
import torch

from models import coding
from models.likelihoods import dmol_nats_per_dim, uint8_to_dmol_target


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_tables_are_the_dmol_likelihood(channels):
    """Coding channel by channel with the tables costs exactly the joint DMoL NLL (RGB coupled
    through the means and the mixture weights), and every table is a distribution."""
    torch.manual_seed(0)
    n, m, size = 3, 4, 5
    params = torch.randn(n, m * (1 + 3 * channels), size, size) * 2.0
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    images[0, :, 0, 0] = 0  # the open edge bins
    images[1, :, 0, 0] = 255
    total = torch.zeros(n, dtype=torch.float64)
    for c in range(channels):
        table = coding.dmol_table(params, images[:, :c], c, channels)  # (N, H, W, 256)
        assert table.shape == (n, size, size, 256) and table.dtype == torch.float64
        assert torch.allclose(table.sum(-1), torch.ones(n, size, size, dtype=torch.float64))
        picked = torch.gather(table, -1, images[:, c].long()[..., None])[..., 0]
        total -= torch.log(picked).sum(dim=(1, 2))
    expected = dmol_nats_per_dim(uint8_to_dmol_target(images), params.double()) \
        * (channels * size * size)
    # The likelihood replaces bin masses under 1e-5 by density × width; the tables are exact.
    assert torch.allclose(total, expected, rtol=1e-5), (total, expected)


def test_dmol_table_of_later_channel_depends_on_earlier_values():
    torch.manual_seed(1)
    params = torch.randn(1, 2 * 10, 1, 1)
    red_dark = torch.zeros(1, 1, 1, 1, dtype=torch.uint8)
    red_bright = torch.full((1, 1, 1, 1), 250, dtype=torch.uint8)
    assert not torch.allclose(coding.dmol_table(params, red_dark, 1, 3),
                              coding.dmol_table(params, red_bright, 1, 3))


def test_categorical_table_is_the_softmax_in_float64():
    logits = torch.randn(4, 256)
    table = coding.categorical_table(logits)
    assert table.dtype == torch.float64
    assert torch.allclose(table, torch.softmax(logits.double(), -1))


def test_latent_bins_put_the_prior_at_zero_with_width_one_over_delta():
    torch.manual_seed(2)
    shape = (2, 3, 4, 4)
    prior = (torch.randn(shape), torch.randn(shape) * 0.5)
    width = 1 / 16
    mean, std = coding.latent_bins(prior, prior, width)  # posterior == prior
    assert torch.allclose(mean, torch.zeros(shape, dtype=torch.float64))
    assert torch.allclose(std, torch.full(shape, 16.0, dtype=torch.float64))
    bins = torch.randint(-100, 100, shape, dtype=torch.int32)
    z = coding.latent_value(bins, prior, width)
    assert z.dtype == prior[0].dtype
    expected = prior[0].double() + prior[1].double().exp() * width * bins
    assert torch.allclose(z.double(), expected, atol=1e-5)
    assert coding.latent_bins(None, prior, width) is None


def test_latent_bins_stay_finite_for_extreme_log_stds():
    shape = (1, 1, 1, 1)
    posterior = (torch.zeros(shape), torch.full(shape, -200.0))
    prior = (torch.ones(shape), torch.full(shape, -200.0))
    mean, std = coding.latent_bins(posterior, prior, 1 / 64)
    assert math.isfinite(float(mean)) and 0 < float(std) < math.inf
