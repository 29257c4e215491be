"""The data of the hierarchy figures: shapes, determinism, each figure equal to the sample it
claims to be, and reconstructions that actually carry the image (on a briefly trained model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.engine import latent_figures as lf
from models.vdvae import PRESETS, VDVAE, VDVAEConfig

RESOLUTIONS = (1, 7, 14, 28)  # fmnist_tiny: blocks 1x1,7m1,7x1,14m7,28m14


def perturbed(seed: int = 0) -> VDVAE:
    model = VDVAE(VDVAEConfig(**PRESETS["fmnist_tiny"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=seeded(seed), dtype=torch.uint8)


def flat_levels(n: int, seed: int) -> torch.Tensor:
    """Images that are one grey level (20..235) each, ±12 of pixel noise: the level is a global
    feature a VAE learns in a few dozen steps and its reconstructions must carry."""
    g = seeded(seed)
    level = torch.randint(20, 236, (n, 1, 1, 1), generator=g)
    noise = torch.randint(-12, 13, (n, 1, 28, 28), generator=g)
    return (level + noise).clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------- shapes

def test_shapes_labels_and_determinism():
    model = perturbed()
    images = random_images(2)
    make = {
        "by_resolution": lambda g: lf.generation_by_resolution(model, 3, g),
        "fixed_top": lambda g: lf.fixed_top_resampled_below(model, images, 3, g),
        "temperature": lambda g: lf.temperature_sweep(model, (0.2, 1.0), 3, g),
        "reconstructions": lambda g: lf.reconstructions(model, images, g),
    }
    shapes = {"by_resolution": (3, 4, 1, 28, 28), "fixed_top": (2, 4, 3, 1, 28, 28),
              "temperature": (3, 2, 1, 28, 28), "reconstructions": (2, 2, 1, 28, 28)}
    labels = {"by_resolution": ("resolution", RESOLUTIONS),
              "fixed_top": ("resolution", RESOLUTIONS),
              "temperature": ("temperature", (0.2, 1.0)),
              "reconstructions": ("image", ("input", "reconstruction"))}
    for name, figure in make.items():
        a, b, other = figure(seeded(3)), figure(seeded(3)), figure(seeded(4))
        assert isinstance(a.images, np.ndarray) and a.images.dtype == np.uint8, name
        assert a.images.shape == shapes[name], name
        assert (a.column_name, a.column_values) == labels[name], name
        assert np.array_equal(a.images, b.images), name
        assert not np.array_equal(a.images, other.images), name  # the seed matters
    recon = make["reconstructions"](seeded(3))
    assert np.array_equal(recon.images[:, 0], images.numpy())
    assert np.array_equal(recon.originals, images.numpy())


def test_the_callers_generator_draws_only_latents_and_the_global_rng_is_untouched():
    model = perturbed()
    state = torch.get_rng_state()
    g = seeded(3)
    lf.generation_by_resolution(model, 2, g)
    assert torch.equal(torch.get_rng_state(), state)
    # The generator moved by exactly one prior draw of every latent (the pixels drew nothing).
    h = seeded(3)
    model.decode([], n=2, generator=h)
    assert torch.equal(g.get_state(), h.get_state())


# ---------------------------------------------------------------- each figure is what it says

def test_generation_by_resolution_columns_extend_one_draw():
    """Column r is the sample whose first k_r blocks (resolution <= r) have temperature 1 and
    the rest 0, from the same seed: the same ε for those blocks in every column. The last column
    is the full prior sample at pixel mode."""
    model = perturbed()
    figure = lf.generation_by_resolution(model, 3, seeded(3))
    n_layers = model.config.n_top_down
    for column, (_, k) in enumerate(lf.resolution_prefixes(model)):
        temperature = [1.0] * k + [0.0] * (n_layers - k)
        expected = model.sample(3, temperature=temperature, generator=seeded(3),
                                pixel_temperature=0.0)
        assert np.array_equal(figure.images[:, column], expected.numpy()), column
    full = model.sample(3, temperature=1.0, generator=seeded(3), pixel_temperature=0.0)
    assert np.array_equal(figure.images[:, -1], full.numpy())
    assert not np.array_equal(figure.images[:, 0], figure.images[:, -1])


def test_temperature_sweep_shares_the_draw_across_columns():
    model = perturbed()
    temperatures = (0.0, 0.5, 1.0)
    g = seeded(3)
    figure = lf.temperature_sweep(model, temperatures, 3, g)
    for column, t in enumerate(temperatures):
        expected = model.sample(3, temperature=t, generator=seeded(3), pixel_temperature=0.0)
        assert np.array_equal(figure.images[:, column], expected.numpy()), t
    h = seeded(3)
    model.decode([], n=3, temperature=1.0, generator=h)
    assert torch.equal(g.get_state(), h.get_state())  # where the last column left it


def test_fixed_top_spread_vanishes_at_the_top_and_the_top_is_the_reconstruction():
    model = perturbed()
    images = random_images(3)
    figure = lf.fixed_top_resampled_below(model, images, 4, seeded(3))
    spread = figure.images.astype(np.int16).std(axis=2).mean(axis=(0, 2, 3, 4))  # per column
    assert spread[-1] == 0.0  # every latent is the posterior's: nothing left to redraw
    assert spread[0] > 0.0  # at the lowest resolution most latents are redrawn
    recon = lf.reconstructions(model, images, seeded(3))
    assert np.array_equal(figure.images[:, -1, 0], recon.images[:, 1])
    assert np.array_equal(figure.originals, images.numpy())


def test_fixed_top_keeps_the_posterior_latents_of_the_top_blocks():
    """The lowest column equals decoding the first image's first block from the posterior draw
    and the rest from the prior, replayed with the figure's own generator sequence."""
    model = perturbed()
    images = random_images(2)
    figure = lf.fixed_top_resampled_below(model, images, 2, seeded(5))
    g = seeded(5)
    with torch.no_grad():
        latents = model.encode(images, generator=g)
        given = [z.repeat_interleave(2, dim=0) for z in latents[:1]]
        params = model.decode(given, n=4, generator=g)
    expected = model.params_to_images(params, 0.0, seeded(0)).reshape(2, 2, 1, 28, 28)
    assert np.array_equal(figure.images[:, 0], expected.numpy())


# ------------------------------------------------------------ reconstructions carry the image

def mean_distances(model: VDVAE, images: torch.Tensor) -> tuple[float, float]:
    """Mean |pixel difference| to the input of the reconstructions and of as many unconditional
    samples (both at pixel mode)."""
    recon = lf.reconstructions(model, images, seeded(0)).images[:, 1].astype(float)
    samples = lf.generation_by_resolution(model, len(images), seeded(0)).images[:, -1]
    x = images.numpy().astype(float)
    return float(np.abs(recon - x).mean()), float(np.abs(samples.astype(float) - x).mean())


def test_reconstructions_are_closer_to_the_input_than_samples_after_brief_training():
    """40 AdamW steps on flat grey levels teach the latents the level: reconstructions of
    held-out images land about half as far from the input as unconditional samples (measured
    26 vs 51 grey levels). Untrained, the two are equally far (the check fails there)."""
    torch.manual_seed(0)
    model = VDVAE(VDVAEConfig(**PRESETS["fmnist_tiny"]))
    held_out = flat_levels(16, seed=99)
    recon, samples = mean_distances(model, held_out)
    assert not recon < 0.8 * samples, (recon, samples)
    train = flat_levels(64, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3, betas=(0.9, 0.9))
    g = seeded(1)
    for _ in range(40):
        batch = train[torch.randint(0, len(train), (8,), generator=g)]
        loss = model.loss(batch)["loss_nats_per_dim"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recon, samples = mean_distances(model, held_out)
    assert recon < 0.8 * samples, (recon, samples)


# ------------------------------------------------------------------------------ bad input

def test_bad_arguments_are_named():
    model = perturbed()
    with pytest.raises(ValueError, match="generator"):
        lf.generation_by_resolution(model, 2, None)
    with pytest.raises(ValueError, match="n_samples"):
        lf.generation_by_resolution(model, 0, seeded())
    with pytest.raises(ValueError, match="n_redraws"):
        lf.fixed_top_resampled_below(model, random_images(1), 0, seeded())
    with pytest.raises(ValueError, match="images"):
        lf.reconstructions(model, random_images(1).float(), seeded())
    with pytest.raises(ValueError, match="temperatures"):
        lf.temperature_sweep(model, (), 2, seeded())
    with pytest.raises(ValueError, match="temperatures"):
        lf.temperature_sweep(model, (0.5, -1.0), 2, seeded())

    class Decreasing:
        def block_resolutions(self):
            return [1, 7, 1]

    with pytest.raises(ValueError, match="decrease"):
        lf.resolution_prefixes(Decreasing())


def test_hierarchy_figures_makes_all_four_at_the_given_sizes():
    model = perturbed()
    figures = lf.hierarchy_figures(model, random_images(5), seed=0, n_samples=2, n_images=2,
                                   n_redraws=2, temperatures=(0.5, 1.0), n_reconstructions=3)
    assert {k: v.images.shape for k, v in figures.items()} == {
        "generation_by_resolution": (2, 4, 1, 28, 28),
        "fixed_top_resampled_below": (2, 4, 2, 1, 28, 28),
        "temperature_sweep": (2, 2, 1, 28, 28),
        "reconstructions": (3, 2, 1, 28, 28)}
