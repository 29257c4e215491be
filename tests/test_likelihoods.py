"""Properties of the likelihood math: KL against torch.distributions, DMOL against the reference's
vectors, discrete likelihoods that sum to one, the sampler drawing from the scored distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from models.likelihoods import (categorical_nats_per_dim, dmol_grid_to_uint8, dmol_nats_per_dim,
                                dmol_sample, gaussian_kl, gaussian_log_density, nats_to_bits,
                                uint8_to_dmol_target)


def test_nats_to_bits():
    assert nats_to_bits(math.log(2.0)) == pytest.approx(1.0, abs=1e-15)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu_q, mu_p = torch.randn(2, 1000, generator=g, dtype=torch.float64)
    ls_q, ls_p = torch.randn(2, 1000, generator=g, dtype=torch.float64)
    expected = kl_divergence(Normal(mu_q, ls_q.exp()), Normal(mu_p, ls_p.exp()))
    torch.testing.assert_close(gaussian_kl(mu_q, ls_q, mu_p, ls_p), expected, rtol=1e-12,
                               atol=1e-12)
    assert torch.all(gaussian_kl(mu_q, ls_q, mu_q, ls_q).abs() < 1e-14)  # KL(q‖q) = 0


def test_gaussian_log_density_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    z, mu, logstd = torch.randn(3, 500, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gaussian_log_density(z, mu, logstd),
                               Normal(mu, logstd.exp()).log_prob(z), rtol=1e-12, atol=1e-12)


def test_uniform_categorical_is_exactly_8_bits_per_dim():
    logits = torch.zeros(2, 3, 256, 4, 4)
    target = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    bits = nats_to_bits(categorical_nats_per_dim(logits, target))
    torch.testing.assert_close(bits, torch.full((2,), 8.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_categorical_nll_is_minus_log_softmax_at_the_target_with_and_without_gradients(
        channels_last):
    g = torch.Generator().manual_seed(3)
    logits = 4 * torch.randn(2, 3 * 256, 5, 6, generator=g)
    if channels_last:  # how the PixelCNN's head hands them over
        logits = logits.contiguous(memory_format=torch.channels_last)
    logits = logits.view(2, 3, 256, 5, 6)
    target = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8, generator=g)
    log_probs = torch.log_softmax(logits.double(), dim=2)
    picked = log_probs.gather(2, target.long().unsqueeze(2)).squeeze(2)  # (N, C, H, W)
    expected = -picked.mean(dim=(1, 2, 3))
    with torch.no_grad():
        evaluation = categorical_nats_per_dim(logits, target)
    training = categorical_nats_per_dim(logits.clone().requires_grad_(), target)
    torch.testing.assert_close(evaluation.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(training.detach().double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["dmol_nmix10.pt", "dmol_nmix1.pt"])
def test_dmol_matches_reference_vectors(reference_dir, name):
    ref = torch.load(reference_dir / name, weights_only=True)
    target = ref["target_nhwc"].permute(0, 3, 1, 2)  # NHWC -> NCHW, channels keep their order
    params = ref["params_nhwc"].permute(0, 3, 1, 2)
    assert params.shape[1] == 10 * ref["num_mixtures"]
    torch.testing.assert_close(dmol_nats_per_dim(target, params), ref["expected_nats_per_dim"],
                               rtol=0, atol=1e-5)


def _random_params(m: int, c: int, seed: int) -> torch.Tensor:
    """(1, M(1+3C), 1, 1) float64 DMOL parameters with moderate scales and strong coefficients."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, generator=g)
    per_channel = []
    for _ in range(c):
        means = 1.6 * torch.rand(m, generator=g) - 0.8
        log_scales = -1.5 * torch.rand(m, generator=g)
        coeffs = 2.0 * torch.randn(m, generator=g)
        per_channel.append(torch.cat([means, log_scales, coeffs]))
    return torch.cat([logits, *per_channel]).double().reshape(1, -1, 1, 1)


def _grid(n_bits: int) -> torch.Tensor:
    return uint8_to_dmol_target(torch.arange(0, 256, 2 ** (8 - n_bits), dtype=torch.uint8),
                                n_bits).double()


@pytest.mark.parametrize("n_bits", [8, 5, 1])
def test_dmol_one_channel_probabilities_sum_to_one(n_bits):
    levels = _grid(n_bits)
    assert len(levels) == 2 ** n_bits and levels[0] == -1 and levels[-1] == 1
    params = _random_params(m=3, c=1, seed=n_bits)
    target = levels.reshape(-1, 1, 1, 1)
    nll = dmol_nats_per_dim(target, params.expand(len(levels), -1, -1, -1), n_bits)
    assert nll.dtype == torch.float64
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_dmol_rgb_probabilities_sum_to_one_on_3_bit_grid():
    levels = _grid(3)
    combos = torch.tensor(list(itertools.product(levels.tolist(), repeat=3)), dtype=torch.float64)
    target = combos.reshape(-1, 3, 1, 1)  # all 8^3 pixels
    params = _random_params(m=4, c=3, seed=3).expand(len(combos), -1, -1, -1)
    nll_per_pixel = dmol_nats_per_dim(target, params, n_bits=3) * 3
    assert torch.exp(-nll_per_pixel).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_dmol_sampler_draws_the_scored_distribution():
    """Empirical frequencies of 2-bit RGB samples match exp(-NLL) of every one of the 64 pixels."""
    n_bits, draws = 2, 40_000
    params = _random_params(m=3, c=3, seed=4).float()
    g = torch.Generator().manual_seed(5)
    samples = dmol_sample(params.expand(draws, -1, -1, -1), 3, n_bits, generator=g)
    levels = _grid(n_bits).float()
    assert torch.isin(samples, levels).all()
    index = torch.round((samples.reshape(draws, 3) + 1) * 1.5).long()
    counts = torch.bincount(index[:, 0] * 16 + index[:, 1] * 4 + index[:, 2], minlength=64)
    combos = torch.tensor(list(itertools.product(levels.tolist(), repeat=3)))
    probs = torch.exp(-3 * dmol_nats_per_dim(combos.reshape(-1, 3, 1, 1).double(),
                                             params.double().expand(64, -1, -1, -1), n_bits))
    freq = counts.double() / draws
    tolerance = 5 * torch.sqrt(probs * (1 - probs) / draws) + 1e-3
    assert torch.all((freq - probs).abs() < tolerance), (freq - probs).abs().max()


def test_dmol_sampler_at_temperature_zero_is_the_modal_component_mean():
    params = _random_params(m=3, c=1, seed=6).float().expand(5, -1, 2, 2)
    a = dmol_sample(params, 1, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = dmol_sample(params, 1, temperature=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    m = 3
    best = params[0, :m, 0, 0].argmax()
    mean = params[0, m + best, 0, 0].clamp(-1, 1)
    expected = torch.round((mean + 1) * 127.5) / 127.5 - 1
    torch.testing.assert_close(a, torch.full_like(a, expected.item()))


@pytest.mark.parametrize("n_bits", range(1, 9))
def test_uint8_grid_round_trip(n_bits):
    pixels = torch.arange(256, dtype=torch.uint8)
    target = uint8_to_dmol_target(pixels, n_bits)
    back = dmol_grid_to_uint8(target, n_bits)
    shift = 8 - n_bits
    assert torch.equal(back.long() >> shift, pixels.long() >> shift)
    assert back.min() == 0 and back.max() == 255
    if n_bits == 8:
        assert torch.equal(back, pixels)
        torch.testing.assert_close(target, pixels.float() / 127.5 - 1, rtol=0, atol=0)


def test_dmol_computes_in_float32_from_bfloat16_params():
    ref_params = _random_params(m=2, c=3, seed=7).float().expand(2, -1, 4, 4)
    target = uint8_to_dmol_target(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8))
    out = dmol_nats_per_dim(target, ref_params.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, dmol_nats_per_dim(target, ref_params), rtol=0.02, atol=0.02)
