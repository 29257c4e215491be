"""PixelCNN sampling: the cached sampler returns exactly the naive sampler's images for the same
generator, the naive sampler's per-position head equals the full forward pass, and the
inverse-CDF draw has the right distribution."""

from __future__ import annotations

import pytest
import torch

from models.pixelcnn import PRESETS, GatedPixelCNN, GatedPixelCNNConfig
from models.pixelcnn_sampling import _Head, categorical_from_uniform


def perturbed_model(**fields) -> GatedPixelCNN:
    """float64 (so the two samplers' logits agree far below any sampling boundary), with
    parameters moved away from init and the output scaled up so samples are not near-uniform
    noise: a mistake in what a step conditions on then changes the images."""
    model = GatedPixelCNN(GatedPixelCNNConfig(**fields)).double()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator,
                                              dtype=parameter.dtype))
        model.head.out.weight.mul_(4.0)
    return model


CASES = {
    # kernel 3 everywhere, 3 layers; 7×7 covers corners, first row and last column.
    "grey_softmax": dict(image_size=7, image_channels=1, n_layers=3, channels=6, kernel_size=3,
                         first_kernel_size=3),
    # The tiny preset: RGB masking with sub-pixel steps, first kernel 3.
    "rgb_softmax": dict(PRESETS["tiny"], image_size=6),
    # A 5×5 first filter and 5×5 later filters (two columns of horizontal cache per layer).
    "rgb_softmax_k5": dict(image_size=5, image_channels=3, n_layers=2, channels=6, kernel_size=5,
                           first_kernel_size=5, head_channels=9),
    "rgb_dmol": dict(image_size=6, image_channels=3, n_layers=3, channels=5, kernel_size=3,
                     first_kernel_size=5, output="dmol", num_mixtures=3),
    "grey_dmol": dict(image_size=6, image_channels=1, n_layers=2, channels=4, kernel_size=3,
                      first_kernel_size=3, output="dmol", num_mixtures=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_samples_equal_naive_samples(case):
    model = perturbed_model(**CASES[case])
    channels, size, _ = model.image_shape
    naive = model.sample(3, method="naive", generator=torch.Generator().manual_seed(11))
    cached = model.sample(3, method="cached", generator=torch.Generator().manual_seed(11))
    assert naive.dtype == torch.uint8 and naive.shape == (3, channels, size, size)
    assert torch.equal(cached, naive)
    # The generator drives the draw: another seed gives other images, and the images span
    # more than a handful of values.
    other = model.sample(3, method="cached", generator=torch.Generator().manual_seed(12))
    assert not torch.equal(other, cached)
    assert cached.unique().numel() > 10


def test_cached_equals_naive_in_float32_for_the_cpu_preset_rows():
    # The benchmarks run float32; check the two paths agree there too on a cheap slice of the
    # cpu_cifar architecture (same layers, smaller image).
    model = GatedPixelCNN(GatedPixelCNNConfig(**dict(PRESETS["cpu_cifar"], image_size=5)))
    naive = model.sample(4, method="naive", generator=torch.Generator().manual_seed(5))
    cached = model.sample(4, method="cached", generator=torch.Generator().manual_seed(5))
    assert torch.equal(cached, naive)


def test_same_seed_same_images_and_global_rng_when_no_generator():
    model = perturbed_model(**CASES["rgb_softmax"])
    first = model.sample(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, model.sample(2, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(4)
    a = model.sample(2, method="naive")
    torch.manual_seed(4)
    assert torch.equal(a, model.sample(2, method="cached"))


def test_head_at_one_position_equals_the_forward_pass():
    # The samplers evaluate the output head at the sampled position only.
    model = perturbed_model(**CASES["rgb_softmax"])
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64) * 2 - 1
    logits = model(x)  # (N, C, 256, H, W)
    features = model.features(x)
    head = _Head(model)
    for c, i, j in [(0, 0, 0), (1, 2, 5), (2, 5, 3)]:
        torch.testing.assert_close(head.logits(features[:, :, i, j], c), logits[:, c, :, i, j],
                                   rtol=1e-12, atol=1e-12)


def test_inverse_cdf_draw_matches_the_softmax():
    # Evenly spaced uniforms: each class gets a share of them equal to its probability
    # up to one grid step.
    logits = torch.randn(1, 256) * 3
    probabilities = torch.softmax(logits.double(), dim=-1)[0]
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    values = categorical_from_uniform(logits.expand(grid.numel(), 256), grid)
    counts = torch.bincount(values, minlength=256).double() / grid.numel()
    assert torch.all((counts - probabilities).abs() <= 1.0 / grid.numel() + 1e-12)
    # Boundaries: u = 0 gives the first class with mass, u → 1 the last class with mass.
    peaked = torch.full((2, 256), -1e9)
    peaked[:, 7] = 0.0
    peaked[:, 200] = 0.0
    edge = categorical_from_uniform(peaked, torch.tensor([0.0, 1.0 - 1e-16], dtype=torch.float64))
    assert edge.tolist() == [7, 200]


def test_unknown_method_and_bad_n():
    model = GatedPixelCNN(GatedPixelCNNConfig(**PRESETS["tiny"]))
    with pytest.raises(ValueError, match="unknown sampling method 'fast'. Valid: naive, cached"):
        model.sample(1, method="fast")
    with pytest.raises(ValueError, match="n=0"):
        model.sample(0)
