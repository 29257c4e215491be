"""VDVAE: the reference golden model, exact parameter counts, config validation, the registry
interface, importance weighting and sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.likelihoods import nats_to_bits
from models import registry
from models.vdvae import PRESETS, VDVAE, VDVAEConfig, parameter_count, width_for_param_budget

PUBLISHED_PARAMS = {"cifar10": 39_145_700, "imagenet32": 119_280_868, "imagenet64": 125_005_860,
                    "ffhq256": 114_874_852, "ffhq1024": 109_366_904}
# The CPU-scale prototype reported 402,735 parameters; the reference architecture gives 403,188
# (test_fmnist_400k_differs_from_the_prototype_by_two_named_parts explains the 453).
SMALL_PARAMS = {"fmnist_400k": 403_188, "fmnist_tiny": 26_272, "cifar10_tiny": 147_996}


def perturbed_model(preset: str = "fmnist_tiny", seed: int = 0, **overrides) -> VDVAE:
    """A model with every parameter moved off its init (the zero-initialised prior included)."""
    model = VDVAE(VDVAEConfig(**{**PRESETS[preset], **overrides}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def images_for(model: VDVAE, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *model.image_shape), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------- reference match

def test_matches_reference_model(reference_dir):
    ref = torch.load(reference_dir / "vdvae_tiny_cifar.pt", weights_only=True)
    config = VDVAEConfig(**ref["config"])
    assert config == VDVAEConfig(**PRESETS["cifar10_tiny"])
    model = VDVAE(config)
    model.load_reference_state_dict(ref["state_dict"])
    images = ref["images_nhwc_uint8"].permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = model(images, noise=ref["noise"])
    for key, expected in ref["expected"].items():
        torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-4, msg=key)


def test_load_reference_state_dict_names_bad_keys(reference_dir):
    state = dict(torch.load(reference_dir / "vdvae_tiny_cifar.pt", weights_only=True)["state_dict"])
    del state["decoder.gain"]
    state["decoder.extra"] = torch.zeros(1)
    model = VDVAE(VDVAEConfig(**PRESETS["cifar10_tiny"]))
    with pytest.raises(ValueError, match=r"missing 1 \[decoder.gain\].*unexpected 1 "
                                         r"\[decoder.extra\]"):
        model.load_reference_state_dict(state)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_state_dict_names_and_shapes_match_reference_listing(reference_dir, name):
    lines = (reference_dir / f"state_dict_keys_{name}.tsv").read_text().splitlines()
    assert f"{PUBLISHED_PARAMS[name]} parameters" in lines[0]
    expected = dict(line.split("\t") for line in lines[1:])
    with torch.device("meta"):
        model = VDVAE(VDVAEConfig(**PRESETS[name]))
    assert {k: str(tuple(v.shape)) for k, v in model.state_dict().items()} == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts(name):
    expected = {**PUBLISHED_PARAMS, **SMALL_PARAMS}[name]
    config = VDVAEConfig(**PRESETS[name])
    assert parameter_count(config) == expected
    with torch.device("meta"):
        model = VDVAE(config)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_fmnist_400k_differs_from_the_prototype_by_two_named_parts():
    """The prototype (402,735, odd) cannot share our layout: every part of ours has an even size.
    It is ours less the M grey-image coefficient channels of the DMOL head (M·(w + 1) = 325, unused
    for one channel) and less the decoder's output gain and bias (2·w = 128)."""
    config = VDVAEConfig(**PRESETS["fmnist_400k"])
    w, m = config.width, config.num_mixtures
    assert parameter_count(config) - m * (w + 1) - 2 * w == 402_735


def test_grey_dmol_coefficient_channels_are_unused():
    """For one image channel the head's coefficient outputs (the last M of the M(1+3C)) get no
    gradient: the reference layout keeps them, so they count as parameters but do nothing."""
    torch.manual_seed(0)
    model = perturbed_model("fmnist_tiny")
    images = torch.randint(0, 256, (4, *model.image_shape), dtype=torch.uint8)
    model.loss(images)["loss_nats_per_dim"].sum().backward()
    m = model.config.num_mixtures
    grad = model.decoder.out_net.out_conv.weight.grad.flatten(1).abs().sum(1)  # per output channel
    assert torch.all(grad[3 * m:] == 0)
    assert torch.all(grad[:3 * m] > 0)


def test_registered_with_the_registry():
    family = registry.get("vdvae")
    assert (family.config_cls, family.model_cls) == (VDVAEConfig, VDVAE)
    assert set(family.presets) == set(PRESETS)
    assert family.can(registry.IW_NLL) and family.can(registry.ACTIVE_UNITS)
    assert family.size_field == "width" and not family.autoregressive
    config = VDVAEConfig(**PRESETS["fmnist_400k"], effective_depth=7)
    assert family.effective_depth(config) == 7
    assert family.effective_depth(VDVAEConfig(**PRESETS["fmnist_400k"])) == config.n_top_down
    assert family.image_shape(config) == VDVAE(config).image_shape


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("fields, field", [
    (dict(enc_blocks="32x2,32q2"), "enc_blocks"),
    (dict(enc_blocks="32x1,32d3"), "enc_blocks"),
    (dict(enc_blocks="32x1,16x1"), "enc_blocks"),
    (dict(dec_blocks="1x1,4m1,4x2,8m4"), "dec_blocks"),  # never reaches image_size 32
    (dict(dec_blocks="1x1,2m1,32m2"), "dec_blocks"),  # no encoder activation at 2
    (dict(dec_blocks="1x1,4d1"), "dec_blocks"),
    (dict(custom_width_str="32=512"), "custom_width_str"),
    (dict(custom_width_str="16:8"), "custom_width_str"),  # encoder would have to shrink
    (dict(effective_depth=0), "effective_depth"),
    (dict(effective_depth=44), "effective_depth"),
    (dict(image_channels=2), "image_channels"),
    (dict(width="384"), "width"),
    (dict(n_bits=9), "n_bits"),
    (dict(width=2), "bottleneck_multiple"),
])
def test_invalid_config_names_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        VDVAEConfig(**fields)


def test_effective_depth_groups_are_contiguous_and_balanced():
    config = VDVAEConfig(**PRESETS["fmnist_400k"], effective_depth=4)
    assert [len(g) for g in config.groups] == [4, 4, 3, 3]
    assert [j for g in config.groups for j in g] == list(range(14))
    assert [list(g) for g in dataclasses.replace(config, effective_depth=None).groups] == \
        [[j] for j in range(14)]


def test_width_for_param_budget_finds_the_closest_width():
    fields = {k: v for k, v in PRESETS["fmnist_400k"].items() if k != "width"}
    assert width_for_param_budget(parameter_count(VDVAEConfig(width=48, **fields)), **fields) == 48
    target = 250_000
    width = width_for_param_budget(target, **fields)
    counts = {w: parameter_count(VDVAEConfig(width=w, **fields)) for w in (width - 1, width,
                                                                            width + 1)}
    assert min(counts, key=lambda w: abs(counts[w] - target)) == width


def test_width_for_param_budget_reports_a_bad_field():
    with pytest.raises(ValueError, match="dec_blocks"):
        width_for_param_budget(100_000, image_size=28, image_channels=1,
                               enc_blocks="28x1,28d2,14x1,14d2,7x1,7d7,1x1",
                               dec_blocks="1x1,7m1,14q7,28m14")


def test_unit_interval_input_is_the_same_affine_map():
    """(x/255 + s)·c with input_unit_interval equals (x + 255 s)·c/255 on raw pixels."""
    model = perturbed_model()
    shift, scale = PRESETS["fmnist_tiny"]["input_shift"], PRESETS["fmnist_tiny"]["input_scale"]
    unit = VDVAE(dataclasses.replace(model.config, input_unit_interval=True,
                                     input_shift=shift / 255, input_scale=scale * 255))
    unit.load_state_dict(model.state_dict())
    images = images_for(model, 3)
    noise = [torch.randn(3, 4, b.resolution, b.resolution) for b in model.decoder.dec_blocks]
    with torch.no_grad():
        torch.testing.assert_close(unit(images, noise)["elbo_nats_per_dim"],
                                   model(images, noise)["elbo_nats_per_dim"])


# ---------------------------------------------------------------------------------- the ELBO

def test_loss_interface_and_elbo_decomposition():
    model = perturbed_model()
    images = images_for(model, 5)
    out = model.loss(images)
    n_layers = model.config.n_top_down
    assert out["kl_nats_per_layer"].shape == (5, n_layers)
    assert torch.equal(out["loss_nats_per_dim"], out["elbo_nats_per_dim"])
    torch.testing.assert_close(out["rate_nats_per_dim"],
                               out["kl_nats_per_layer"].sum(1) / (28 * 28))
    torch.testing.assert_close(out["elbo_nats_per_dim"],
                               out["distortion_nats_per_dim"] + out["rate_nats_per_dim"])
    assert torch.all(out["kl_nats_per_layer"] >= 0)
    assert model.image_shape == (1, 28, 28)
    with pytest.raises(ValueError, match="images"):
        model.loss(images.float())


def test_bfloat16_autocast_keeps_the_likelihood_in_float32():
    model = perturbed_model()
    images = images_for(model, 4)
    noise = [torch.randn(4, 4, b.resolution, b.resolution) for b in model.decoder.dec_blocks]
    reference = model.loss(images, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(images, noise)
    for key, value in out.items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value, reference[key], rtol=0.02, atol=0.02)


def test_training_steps_lower_the_loss():
    model = perturbed_model()
    images = images_for(model, 8)
    noise = [torch.randn(8, 4, b.resolution, b.resolution) for b in model.decoder.dec_blocks]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.9))
    losses = []
    for _ in range(8):
        loss = model.loss(images, noise)["loss_nats_per_dim"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


# ------------------------------------------------------------------------- importance weighting

def test_iw_with_one_sample_is_the_single_sample_elbo_estimate():
    model = perturbed_model()
    images = images_for(model, 4)
    iw = model.iw_nll_bits_per_dim(images, k=1, generator=torch.Generator().manual_seed(3))
    log_w = model.log_importance_weights_nats(images, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(iw, nats_to_bits(-log_w / (28 * 28)))


def test_log_weights_average_to_the_analytic_elbo():
    """With the same ε, -log w / D - ELBO = Σ_j (log q - log p - KL_j) / D, mean zero."""
    model = perturbed_model()
    images = images_for(model, 8).repeat(16, 1, 1, 1)
    noise = [torch.randn(128, 4, b.resolution, b.resolution) for b in model.decoder.dec_blocks]
    with torch.no_grad():
        elbo = model(images, noise)["elbo_nats_per_dim"]
    diff = -model.log_importance_weights_nats(images, noise) / (28 * 28) - elbo
    assert diff.mean().abs() < 4 * diff.std() / len(diff) ** 0.5 + 1e-6


def test_iw_bound_is_below_the_elbo_and_tightens_with_k():
    """Averaged over 16 images (fixed seed): ELBO > IW-4 > IW-32, by margins several times the
    noise of these averages (about 0.01-0.02 bits/dim)."""
    model = perturbed_model()
    images = images_for(model, 16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([nats_to_bits(model(images, generator=g)["elbo_nats_per_dim"])
                            for _ in range(8)]).mean()
    iw = {k: model.iw_nll_bits_per_dim(images, k, chunk_size=8, generator=g).mean()
          for k in (4, 32)}
    assert iw[4] < elbo - 0.03
    assert iw[32] < iw[4] - 0.05


# ---------------------------------------------------------------------------------- sampling

def test_sample_shapes_and_temperature_zero_determinism():
    model = perturbed_model()
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == torch.uint8
    a = model.sample(3, temperature=0.0, pixel_temperature=0.0,
                     generator=torch.Generator().manual_seed(1))
    b = model.sample(3, temperature=0.0, pixel_temperature=0.0,
                     generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(a[0], a[1])
    per_block = model.sample(2, temperature=[0.5] * model.config.n_top_down)
    assert per_block.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=[1.0, 1.0])


def test_sample_with_fixed_latents():
    model = perturbed_model()
    images = images_for(model, 3)
    n_layers = model.config.n_top_down

    def run(k, temperature, seed):
        return model.sample_with_fixed_latents(images, k, temperature=temperature,
                                               generator=torch.Generator().manual_seed(seed))

    # All latents fixed: the prior temperature no longer matters.
    assert torch.equal(run(n_layers, 0.0, 5), run(n_layers, 1.0, 5))
    # No latents fixed at temperature 0: the unconditional mode, whatever the images.
    unconditional = model.sample(3, temperature=0.0, pixel_temperature=0.0)
    fixed = model.sample_with_fixed_latents(images, 0, temperature=0.0, pixel_temperature=0.0)
    assert torch.equal(fixed, unconditional)
    assert run(2, 1.0, 0).shape == images.shape


def test_low_bit_samples_lie_on_the_grid():
    model = perturbed_model(n_bits=5)
    samples = model.sample(4).long()
    assert torch.equal(samples, torch.round((samples >> 3) * 255 / 31).long())


def test_posterior_means_are_deterministic_and_shaped():
    model = perturbed_model()
    images = images_for(model, 2)
    means = model.posterior_means(images)
    assert [tuple(m.shape) for m in means] == [(2, 4, b.resolution, b.resolution)
                                                for b in model.decoder.dec_blocks]
    for a, b in zip(means, model.posterior_means(images)):
        assert torch.equal(a, b)


def test_elbo_pass_hands_out_the_posterior_means_of_its_sampled_path():
    model = perturbed_model()
    images = images_for(model, 3)
    noise = [torch.randn(3, 4, b.resolution, b.resolution) for b in model.decoder.dec_blocks]
    with torch.no_grad():
        plain = model.loss(images, noise)
        asked = model.loss(images, noise, posterior_means=True)
    means = asked.pop("posterior_means")
    assert asked.keys() == plain.keys()  # the default output is untouched
    for key in plain:
        assert torch.equal(asked[key], plain[key]), key
    mean_path = model.posterior_means(images)
    assert [m.shape for m in means] == [m.shape for m in mean_path]
    # The first block sees no sample yet; later blocks are conditioned on this pass's z_<i.
    torch.testing.assert_close(means[0], mean_path[0])
    assert not torch.allclose(means[-1], mean_path[-1])
    # One group (G = 1): every block is conditioned on the group start only, so the sampled
    # path's means are the mean path's.
    single = perturbed_model(effective_depth=1)
    with torch.no_grad():
        means = single.loss(images, noise, posterior_means=True)["posterior_means"]
    for a, b in zip(means, single.posterior_means(images)):
        torch.testing.assert_close(a, b)


def test_channels_last_and_nchw_layouts_agree():
    model = perturbed_model()
    nchw = VDVAE(model.config, channels_last=False)
    nchw.load_state_dict(model.state_dict())
    assert model.decoder.dec_blocks[1].resnet.c2.weight.is_contiguous(
        memory_format=torch.channels_last)
    images = images_for(model, 3)
    noise = [torch.randn(3, 4, b.resolution, b.resolution) for b in model.decoder.dec_blocks]
    with torch.no_grad():
        a, b = model(images, noise), nchw(images, noise)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- memory


def test_activation_checkpointing_keeps_loss_and_gradients_and_saves_memory():
    """Recomputing each top-down block in backward changes nothing but memory: the same loss
    and gradients (same posterior noise), and far fewer bytes kept for backward."""
    from harness.engine.throughput import saved_activation_bytes

    config = VDVAEConfig(**PRESETS["fmnist_tiny"], effective_depth=3)
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VDVAE(config)
        model.use_activation_checkpointing(checkpointing)
        torch.manual_seed(1)  # the same posterior noise for both
        loss = model.loss(images)["loss_nats_per_dim"].mean()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), grads, saved_activation_bytes(model, images)))
    (loss_a, grads_a, bytes_a), (loss_b, grads_b, bytes_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # 0.75x here (this tiny, shallow model keeps little per block); 2.4x less for cifar10
    assert bytes_b < 0.8 * bytes_a, (bytes_a, bytes_b)
    assert registry.get("vdvae").can(registry.ACTIVATION_CHECKPOINTING)
