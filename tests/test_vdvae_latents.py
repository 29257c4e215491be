"""VDVAE latents in and out: `encode` takes the ELBO pass's posterior draws out, `decode` puts
latents back in (verbatim) and draws the rest from the prior at a temperature, as the reference's
`forward_get_latents` and `forward_manual_latents` do."""

from __future__ import annotations

import math

import pytest
import torch

from models import registry
from models.likelihoods import dmol_nats_per_dim, uint8_to_dmol_target
from models.vdvae import PRESETS, VDVAE, VDVAEConfig


def perturbed(depth: int | None = None, preset: str = "fmnist_tiny") -> VDVAE:
    """Every parameter moved off its init, so the zero-initialised prior is not N(0, 1)."""
    model = VDVAE(VDVAEConfig(**PRESETS[preset], effective_depth=depth))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def images_for(model: VDVAE, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *model.image_shape), generator=g, dtype=torch.uint8)


def noise_for(model: VDVAE, n: int, seed: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, model.config.zdim, r, r, generator=g)
            for r in model.block_resolutions()]


def forward_params_and_latents(model: VDVAE, images, **kwargs):
    """The DMoL parameters and the latents z_j of the ELBO pass itself, caught by hooks on the
    output head and on every block's z_proj (whose input is z_j)."""
    caught: dict[str, list] = {"params": [], "z": []}
    hooks = [model.decoder.out_net.register_forward_hook(
        lambda m, i, o: caught["params"].append(o))]
    hooks += [b.z_proj.register_forward_hook(lambda m, i, o: caught["z"].append(i[0]))
              for b in model.decoder.dec_blocks]
    try:
        with torch.no_grad():
            out = model(images, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return caught["params"][0], caught["z"], out


# ------------------------------------------------------------------- encode -> decode = forward

@pytest.mark.parametrize("depth", [None, 2])  # G = L = 5, and groups [3, 2]
def test_decoding_the_encoded_latents_reproduces_the_forward_pass(depth):
    model = perturbed(depth)
    images, noise = images_for(model, 3), noise_for(model, 3)
    params, zs, _ = forward_params_and_latents(model, images, noise=noise)
    with torch.no_grad():
        latents = model.encode(images, noise=noise)
        decoded = model.decode(latents)
    assert len(latents) == model.config.n_top_down
    for z, expected in zip(latents, zs):  # the z of each block's stats
        torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(decoded, params, rtol=1e-6, atol=1e-6)
    # A generator with the seed forward used gives the same ε, in block order.
    params_g, _, _ = forward_params_and_latents(model, images,
                                                generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        latents_g = model.encode(images, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(model.decode(latents_g), params_g, rtol=1e-6, atol=1e-6)
    # ... and another seed does not (the comparison can fail).
    assert not torch.allclose(latents_g[-1], latents[-1])


def test_encoding_fewer_blocks_gives_the_first_latents_of_a_full_encode():
    model = perturbed()
    images, noise = images_for(model, 2), noise_for(model, 2)
    with torch.no_grad():
        full = model.encode(images, noise=noise)
        first = model.encode(images, noise=noise[:2], n_blocks=2)
        assert model.encode(images, n_blocks=0) == []
    assert len(first) == 2
    for a, b in zip(first, full):
        assert torch.equal(a, b)


def test_grouped_latents_of_a_group_do_not_condition_each_other():
    """G = 1: every block's q reads the group start (the bias state), so changing ε of block 0
    changes no other block's latent; at G = L it changes the next block's."""
    images = None
    for depth, independent in ((1, True), (None, False)):
        model = perturbed(depth)
        images = images_for(model, 2) if images is None else images
        noise = noise_for(model, 2)
        moved = [e.clone() for e in noise]
        moved[0] += 1.0
        with torch.no_grad():
            a, b = model.encode(images, noise=noise), model.encode(images, noise=moved)
        assert not torch.equal(a[0], b[0])
        assert torch.equal(a[1], b[1]) == independent, depth


# ------------------------------------------------------------------------------ temperature

def test_temperature_zero_is_the_prior_mean_and_deterministic():
    model = perturbed()
    with torch.no_grad():
        latents = model.encode(images_for(model, 3), n_blocks=2)
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        state = g1.get_state()
        a = model.decode(latents, temperature=0.0, generator=g1)
        b = model.decode(latents, temperature=0.0, generator=g2)
        assert torch.equal(a, b)
        assert torch.equal(g1.get_state(), state)  # nothing drawn at t = 0
        c = model.decode(latents, temperature=1.0, generator=g1)
        empty = [model.decode([], n=2, temperature=0.0, generator=g) for g in (g1, g2)]
    assert not torch.allclose(a, c)  # at t = 1 the free blocks do draw
    assert torch.equal(*empty)
    torch.testing.assert_close(empty[0][0], empty[0][1])  # one prior mean for the batch


N_DRAWS = 200
FREE = 2  # the first free block: blocks 0 and 1 given, block 2 (4 × 7 × 7 elements) drawn


def first_free_variances(model: VDVAE, temperature, seed: int) -> torch.Tensor:
    """Per-element variance over N_DRAWS draws of z at block FREE, (196,), given one fixed z_<FREE
    for every draw (so every draw has the same prior)."""
    with torch.no_grad():
        _, fixed = model.decode([], n=1, temperature=0.0, return_latents=True)
        given = [z.expand(N_DRAWS, -1, -1, -1) for z in fixed[:FREE]]
        _, used = model.decode(given, temperature=temperature, return_latents=True,
                               generator=torch.Generator().manual_seed(seed))
    return used[FREE].var(dim=0).flatten()


def std_ratio_is(var_a: torch.Tensor, var_b: torch.Tensor, expected: float) -> bool:
    """Is the pooled std ratio sqrt(Σ var_a / Σ var_b) within 4 standard errors of `expected`?

    Each element's sample variance is σ_j² χ²_{N-1}/(N-1), so a pooled Σ_j s_j² has relative std
    sqrt(2 / ((N-1) D)) with D = (Σσ²)² / Σσ⁴ the effective number of elements (estimated from
    var_b); a ratio of two independent ones sqrt(2) times that, its square root half of it."""
    ratio = (var_a.sum() / var_b.sum()).sqrt().item()
    d_eff = (var_b.sum() ** 2 / (var_b ** 2).sum()).item()
    standard_error = math.sqrt(2.0) * math.sqrt(2.0 / ((N_DRAWS - 1) * d_eff)) / 2
    return abs(ratio / expected - 1.0) < 4 * standard_error


def test_temperature_scales_the_prior_std_at_the_first_free_block():
    model = perturbed()
    one = first_free_variances(model, 1.0, seed=10)
    assert one.mean().sqrt() > 0.05  # the prior is not degenerate
    half = first_free_variances(model, 0.5, seed=11)
    assert std_ratio_is(half, one, 0.5), (half.sum() / one.sum()).sqrt()
    # An ignored temperature would give a ratio near 1, which the bound rejects.
    again = first_free_variances(model, 1.0, seed=12)
    assert std_ratio_is(again, one, 1.0) and not std_ratio_is(again, one, 0.5)


def test_a_per_block_temperature_list_is_honoured():
    model = perturbed()
    n_layers = model.config.n_top_down
    one = first_free_variances(model, 1.0, seed=20)
    half_here = [1.0] * n_layers
    half_here[FREE] = 0.5
    half_elsewhere = [0.5] * n_layers
    half_elsewhere[FREE] = 1.0
    assert std_ratio_is(first_free_variances(model, half_here, seed=21), one, 0.5)
    assert std_ratio_is(first_free_variances(model, half_elsewhere, seed=22), one, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        model.decode([], n=1, temperature=[1.0] * (n_layers - 1))
    with pytest.raises(ValueError, match="temperature"):
        model.decode([], n=1, temperature=-0.5)


# -------------------------------------------------------------------------- verbatim latents

def test_given_latents_are_used_verbatim():
    model = perturbed()
    with torch.no_grad():
        latents = model.encode(images_for(model, 3))
        a, used = model.decode(latents, generator=torch.Generator().manual_seed(1),
                               return_latents=True)
        b = model.decode(latents, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)  # every latent fixed: the generator changes nothing
        assert all(u is z for u, z in zip(used, latents))
        # Two fixed: those come back as given, the free ones follow the generator.
        _, used_1 = model.decode(latents[:2], generator=torch.Generator().manual_seed(1),
                                 return_latents=True)
        _, used_2 = model.decode(latents[:2], generator=torch.Generator().manual_seed(2),
                                 return_latents=True)
    assert len(used_1) == model.config.n_top_down
    assert all(torch.equal(u, z) for u, z in zip(used_1[:2], latents))
    assert not torch.allclose(used_1[2], used_2[2])
    # Replaying the drawn latents reproduces the draw.
    with torch.no_grad():
        params_1 = model.decode(latents[:2], generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(model.decode(used_1), params_1, rtol=0, atol=0)


def test_sampling_paths_are_encode_and_decode():
    """`sample` and `sample_with_fixed_latents` are decode / encode + decode followed by
    `params_to_images`, drawing from the generator in that order."""
    model = perturbed()
    images = images_for(model, 2)

    def g():
        return torch.Generator().manual_seed(5)

    with torch.no_grad():
        gen = g()
        expected = model.params_to_images(model.decode([], n=2, generator=gen), 1.0, gen)
        assert torch.equal(model.sample(2, generator=g()), expected)
        gen = g()
        latents = model.encode(images, generator=gen, n_blocks=3)
        expected = model.params_to_images(model.decode(latents, generator=gen), 0.5, gen)
        assert torch.equal(model.sample_with_fixed_latents(images, 3, generator=g(),
                                                           pixel_temperature=0.5), expected)


def test_pixel_temperature_zero_is_the_modal_components_mean():
    model = perturbed()
    with torch.no_grad():
        params = model.decode([], n=2, generator=torch.Generator().manual_seed(0))
    a = model.params_to_images(params, 0.0, torch.Generator().manual_seed(1))
    b = model.params_to_images(params, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == (2, 1, 28, 28)
    m = model.config.num_mixtures  # grey layout: [logits M | means M | log scales M | coeffs M]
    best = params[:, :m].argmax(dim=1, keepdim=True)
    mean = params[:, m:2 * m].gather(1, best).clamp(-1, 1)
    assert torch.equal(a, torch.round((mean + 1) * 127.5).to(torch.uint8))
    c = model.params_to_images(params, 1.0, torch.Generator().manual_seed(1))
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------------ validation

def test_bad_latents_are_named():
    model = perturbed()
    with torch.no_grad():
        latents = model.encode(images_for(model, 2))
    bad = list(latents)
    bad[1] = bad[1][:, :, :1]
    with pytest.raises(ValueError, match=r"latents\[1\]: expected a float tensor \(2, 4, 7, 7\)"):
        model.decode(bad)
    with pytest.raises(ValueError, match=r"latents\[0\].*\(3, 4, 1, 1\)"):
        model.decode(latents, n=3)
    with pytest.raises(ValueError, match="at most 5"):
        model.decode(latents + latents[:1])
    with pytest.raises(ValueError, match="n: needed"):
        model.decode([])
    with pytest.raises(ValueError, match="n: must be a positive integer"):
        model.decode([], n=0)
    with pytest.raises(ValueError, match=r"latents\[0\].*got torch.int64"):
        model.decode([torch.zeros(2, 4, 1, 1, dtype=torch.long)])
    with pytest.raises(ValueError, match="n_blocks"):
        model.encode(images_for(model, 2), n_blocks=6)
    with pytest.raises(ValueError, match="noise: expected 5 tensors"):
        model.encode(images_for(model, 2), noise=noise_for(model, 2)[:3])
    with pytest.raises(ValueError, match="params"):
        model.params_to_images(torch.zeros(2, 3, 28, 28))


def test_block_resolutions_and_capability():
    model = perturbed()
    assert model.block_resolutions() == [1, 7, 7, 14, 28]
    assert registry.get("vdvae").can(registry.LATENTS)
    assert not registry.get("pixelcnn").can(registry.LATENTS)


# ------------------------------------------------------------------- the reference checkpoint

def test_reference_checkpoint_round_trips(reference_dir):
    """On the reference's own weights, images and ε: encode -> decode gives the forward pass's
    DMoL parameters, and those parameters score the reference's distortion to 1e-4."""
    ref = torch.load(reference_dir / "vdvae_tiny_cifar.pt", weights_only=True)
    model = VDVAE(VDVAEConfig(**ref["config"]))
    model.load_reference_state_dict(ref["state_dict"])
    images = ref["images_nhwc_uint8"].permute(0, 3, 1, 2).contiguous()
    params, zs, _ = forward_params_and_latents(model, images, noise=ref["noise"])
    with torch.no_grad():
        latents = model.encode(images, noise=ref["noise"])
        decoded = model.decode(latents)
    for z, expected in zip(latents, zs):
        torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(decoded, params, rtol=1e-6, atol=1e-6)
    distortion = dmol_nats_per_dim(uint8_to_dmol_target(images), decoded)
    torch.testing.assert_close(distortion, ref["expected"]["distortion_nats_per_dim"],
                               rtol=0, atol=1e-4)
    # The same on a sampled continuation: fixed top, the rest at the prior mean, twice.
    with torch.no_grad():
        a = model.decode(latents[:4], temperature=0.0)
        b = model.decode(latents[:4], temperature=0.0, generator=torch.Generator())
    assert torch.equal(a, b) and a.shape == (len(images), 100, 32, 32)
