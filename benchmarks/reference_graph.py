"""The public VDVAE implementation's order of operations for the negative ELBO, run on our modules:
the baseline of the cifar10 throughput target (speed target 4, docs/benchmarks.md), timed against
`VDVAE.loss` in the same process.

What it keeps from the reference (openai/vdvae's `Block`, `DecBlock`, `Decoder.forward`), and so
what our graph is measured against:

* NCHW activations and weights (the reference never sets a memory format);
* every bottleneck applies GELU to its own input: the posterior's to the concatenation
  [state, activation] (2w channels) and the prior's to the state again, where ours computes
  GELU(state) once per block and GELU(activation) once per resolution;
* the prior's output sliced in three (mean, log std, feature update) and the state updated in
  the reference's order: x + features, then + z_proj(z), then the resblock;
* the bias states repeated over the batch at the start of the top-down pass;
* the reference's KL expression, -0.5 + log σp - log σq + 0.5 (exp(log σq)² + (μq - μp)²) /
  exp(log σp)², and z = μ + exp(log σ)·ε.

The DMOL likelihood is ours in both graphs (models.likelihoods), so the comparison is of the
network. No grouping: every block is its own group (the presets' default, G = L).
`reference_loss_nats_per_dim` returns the same values as `VDVAE.loss` for the same ε (checked
in tests/test_vdvae.py), so the two graphs do the same work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.likelihoods import dmol_nats_per_dim, uint8_to_dmol_target
from models.vdvae import VDVAE
from models.vdvae_blocks import Bottleneck, TopDownBlock


def _block(block: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    h = block.c1(F.gelu(x))
    h = block.c2(F.gelu(h))
    h = block.c3(F.gelu(h))
    h = block.c4(F.gelu(h))
    out = x + h if block.residual else h
    if block.down_rate:
        out = F.avg_pool2d(out, kernel_size=block.down_rate, stride=block.down_rate)
    return out


def _kl(mu_q, logstd_q, mu_p, logstd_p) -> torch.Tensor:
    return (-0.5 + logstd_p - logstd_q
            + 0.5 * (torch.exp(logstd_q) ** 2 + (mu_q - mu_p) ** 2) / (torch.exp(logstd_p) ** 2))


def _encoder(model: VDVAE, x: torch.Tensor) -> dict[int, torch.Tensor]:
    x = model.encoder.in_conv(x)
    activations = {x.shape[-1]: x}
    for block in model.encoder.enc_blocks:
        x = _block(block, x)
        missing = model.encoder._widths[x.shape[-1]] - x.shape[1]
        if missing > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, missing))
        activations[x.shape[-1]] = x
    return activations


def _top_down(block: TopDownBlock, x, activation, eps):
    q_mean, q_logstd = _block(block.enc, torch.cat([x, activation], dim=1)).chunk(2, dim=1)
    feats = _block(block.prior, x)
    zdim = block.zdim
    p_mean, p_logstd, features = feats[:, :zdim], feats[:, zdim:2 * zdim], feats[:, 2 * zdim:]
    x = x + features
    z = q_mean + torch.exp(q_logstd) * eps
    kl = _kl(q_mean, q_logstd, p_mean, p_logstd)
    x = x + block.z_proj(z)
    return _block(block.resnet, x), kl.sum(dim=(1, 2, 3))


def reference_loss_nats_per_dim(model: VDVAE, images: torch.Tensor,
                                eps: list[torch.Tensor]) -> torch.Tensor:
    """(N,) negative ELBO in nats per dim of uint8 `images`, with ε per top-down block, through
    the reference's graph. `model` should be built with `channels_last=False` (NCHW)."""
    config, decoder = model.config, model.decoder
    if any(len(group) != 1 for group in decoder.groups):
        raise ValueError("the reference graph has no grouping: use effective_depth = n_top_down")
    x = images.float()
    if config.input_unit_interval:
        x = x / 255.0
    activations = _encoder(model, (x + config.input_shift) * config.input_scale)
    n = images.shape[0]
    states = {b.shape[2]: b.repeat(n, 1, 1, 1) for b in decoder.bias_xs}
    kls = []
    for j, block in enumerate(decoder.dec_blocks):
        res = block.resolution
        x = states.get(res)
        if x is None:
            x = torch.zeros(n, block.width, res, res)
        if block.mixin is not None:
            up = states[block.mixin][:, :block.width]
            x = x + F.interpolate(up, scale_factor=res // block.mixin)
        states[res], kl = _top_down(block, x, activations[res], eps[j])
        kls.append(kl)
    params = decoder.out_net(states[config.image_size] * decoder.gain + decoder.bias)
    distortion = dmol_nats_per_dim(uint8_to_dmol_target(images, config.n_bits), params,
                                   config.n_bits)
    return distortion + torch.stack(kls, dim=1).sum(dim=1) / model.n_dims
