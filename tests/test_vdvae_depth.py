"""Effective stochastic depth (the VDVAE depth ablation): grouping top-down blocks changes which
latents condition which, and nothing else (parameters, FLOPs, the G = L model)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.vdvae import PRESETS, VDVAE, VDVAEConfig

N_LAYERS = 5  # fmnist_tiny: 1x1,7m1,7x1,14m7,28m14 (crosses resolutions inside groups)


def grouped(depth: int | None) -> VDVAE:
    torch.manual_seed(0)  # same weights for every depth
    model = VDVAE(VDVAEConfig(**PRESETS["fmnist_tiny"], effective_depth=depth)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(model: VDVAE, n: int = 2):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    noise = [torch.randn(n, 4, b.resolution, b.resolution, generator=g, dtype=torch.float64,
                         requires_grad=True) for b in model.decoder.dec_blocks]
    return images, noise


def test_parameters_do_not_depend_on_depth():
    shapes = {d: {k: v.shape for k, v in grouped(d).state_dict().items()}
              for d in (1, 2, N_LAYERS)}
    assert shapes[1] == shapes[2] == shapes[N_LAYERS]


def test_full_depth_is_the_ungrouped_model():
    images, noise = inputs(grouped(None))
    with torch.no_grad():
        a = grouped(None)(images, noise)
        b = grouped(N_LAYERS)(images, noise)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("depth", [1, 2, N_LAYERS])
def test_latents_condition_only_on_earlier_groups(depth):
    """d KL_j / d ε_i is non-zero exactly when block i is in an earlier group than block j."""
    model = grouped(depth)
    group_of = {j: g for g, group in enumerate(model.config.groups) for j in group}
    images, noise = inputs(model)
    out = model(images, noise)
    for j in range(N_LAYERS):
        grads = torch.autograd.grad(out["kl_nats_per_layer"][:, j].sum(), noise,
                                    retain_graph=True, allow_unused=True)
        for i, grad in enumerate(grads):
            depends = grad is not None and grad.abs().max() > 0
            assert depends == (group_of[i] < group_of[j]), (depth, i, j)
    # Every latent still reaches the image through the deterministic path.
    grads = torch.autograd.grad(out["distortion_nats_per_dim"].sum(), noise)
    assert all(g.abs().max() > 0 for g in grads)


def test_flops_do_not_depend_on_depth():
    flops = {}
    for depth in (1, 2, N_LAYERS):
        model = grouped(depth)
        images, noise = inputs(model)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(images, [e.detach() for e in noise])
        flops[depth] = counter.get_total_flops()
    assert flops[1] > 0 and flops[1] == flops[2] == flops[N_LAYERS]


def test_grouped_sampling_runs_at_every_depth():
    for depth in (1, 3):
        model = grouped(depth)
        assert model.sample(2, temperature=0.0, pixel_temperature=0.0).shape == (2, 1, 28, 28)
    config = dataclasses.replace(grouped(1).config, effective_depth=2)
    assert [len(g) for g in config.groups] == [3, 2]
