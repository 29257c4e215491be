"""Likelihood math as small pure functions. Everything here is in nats.

* `nats_to_bits`: the one place nats become bits.
* `gaussian_kl`: analytic KL between diagonal Gaussians given means and log standard deviations
  (VDVAE, Section 3).
* `gaussian_log_density`: log N(z; μ, σ²) elementwise, for importance weights.
* `categorical_nats_per_dim`: the 256-way softmax per sub-pixel of the PixelCNN papers.
* `dmol_nats_per_dim`, `dmol_sample`: discretized mixture of logistics (PixelCNN++, Salimans et
  al. 2017, Section 2.1; VDVAE's likelihood), for 1- or 3-channel images on an n-bit grid.
* `uint8_to_dmol_target`, `dmol_grid_to_uint8`: between uint8 pixels and that grid in [-1, 1].

n-bit grid (clean form): a uint8 pixel x has level k = x >> (8 - n) in 0..2^n - 1, represented as
2k/(2^n - 1) - 1; every bin has half-width 1/(2^n - 1). For n = 8 this is x/127.5 - 1 with
half-width 1/255 exactly as in the reference. The reference's 5-bit FFHQ-256 variant (targets
floor(x/8)·8/127.5 - 1, which do not lie on that grid, with half-width 1/31) is not reproduced.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def nats_to_bits(nats):
    """Convert nats (per dim, per image, ...) to bits. Works on floats, tensors and arrays."""
    return nats / LN2


def gaussian_kl(mu_q: torch.Tensor, logstd_q: torch.Tensor,
                mu_p: torch.Tensor, logstd_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(q || p) in nats for diagonal Gaussians parameterised by log std.

    KL = -0.5 + log σp - log σq + 0.5 (σq² + (μq - μp)²) / σp²
    """
    return (-0.5 + logstd_p - logstd_q
            + 0.5 * (torch.exp(2.0 * logstd_q) + (mu_q - mu_p) ** 2) * torch.exp(-2.0 * logstd_p))


def categorical_nats_per_dim(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of uint8 images under per-sub-pixel 256-way softmaxes.

    logits: (N, C, 256, H, W); target: (N, C, H, W) integers in [0, 255].
    Returns (N,) nats per dimension (sum over C·H·W sub-pixels divided by C·H·W).
    """
    assert logits.dim() == 5 and logits.shape[2] == 256, logits.shape
    n, c, _, h, w = logits.shape
    assert target.shape == (n, c, h, w), (target.shape, logits.shape)
    # Classes last, (N·H·W·C, 256): log-softmax over contiguous rows, its fast path. A
    # channels_last network output is already laid out so (no copy); the mean over sub-pixels
    # does not depend on their order.
    flat = logits.float().permute(0, 3, 4, 1, 2).reshape(-1, 256)
    nll = F.cross_entropy(flat, target.permute(0, 2, 3, 1).reshape(-1).long(), reduction="none")
    return nll.view(n, -1).mean(dim=1)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mean, exp(logstd)²) in nats."""
    return -0.5 * math.log(2.0 * math.pi) - logstd - 0.5 * ((z - mean) * torch.exp(-logstd)) ** 2


# ------------------------------------------------------------- discretized mixture of logistics

def uint8_to_dmol_target(images: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 levels 2k/(2^n - 1) - 1 with k = x >> (8 - n)."""
    assert 1 <= n_bits <= 8, n_bits
    levels = images.to(torch.int32) >> (8 - n_bits) if n_bits < 8 else images
    return levels.float() / ((2 ** n_bits - 1) / 2.0) - 1.0


def dmol_grid_to_uint8(values: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """Values on (or near) the n-bit grid in [-1, 1] -> uint8 pixels round(k·255/(2^n - 1)).

    `uint8_to_dmol_target` maps these pixels back to the same levels (x >> (8 - n) == k).
    """
    top = 2 ** n_bits - 1
    levels = torch.round((values.float().clamp(-1.0, 1.0) + 1.0) * (top / 2.0))
    return torch.round(levels * (255.0 / top)).to(torch.uint8)


def _dmol_split(params: torch.Tensor, n_channels: int):
    """(N, M(1+3C), H, W) -> logits (N, M, H, W) and means, log scales, coefficients, each
    (N, C, M, H, W).

    Channel order is the reference's channel-last order: [logits M] then per image channel
    [means M | log scales M | coefficient logits M].
    """
    n, p, h, w = params.shape
    m = p // (1 + 3 * n_channels)
    assert m * (1 + 3 * n_channels) == p, (params.shape, n_channels)
    logits = params[:, :m]
    rest = params[:, m:].reshape(n, n_channels, 3 * m, h, w)
    means = rest[:, :, :m]
    log_scales = torch.clamp(rest[:, :, m:2 * m], min=-7.0)
    coeffs = torch.tanh(rest[:, :, 2 * m:])
    return logits, means, log_scales, coeffs


def dmol_nats_per_dim(target: torch.Tensor, params: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """Negative log-likelihood per dimension of a discretized mixture of logistics.

    target: (N, C, H, W) on the n-bit grid in [-1, 1] (see `uint8_to_dmol_target`), C in {1, 3};
    params: (N, M(1+3C), H, W) in the reference layout (for C = 1: 4M values per pixel, the
    coefficient slot unused). RGB means are autoregressive inside a pixel with the true values:
    μ_G += c0·x_R, μ_B += c1·x_R + c2·x_G. Computed in (at least) float32.
    Returns (N,) nats per dimension (sum over pixels and channels divided by C·H·W).
    """
    n, c, h, w = target.shape
    assert c in (1, 3), target.shape
    dtype = torch.promote_types(params.dtype, torch.float32)
    params, x = params.to(dtype), target.to(dtype)
    logits, means, log_scales, coeffs = _dmol_split(params, c)
    x = x.unsqueeze(2)  # (N, C, 1, H, W), broadcast over the M components
    if c == 3:
        means = torch.stack([means[:, 0],
                             means[:, 1] + coeffs[:, 0] * x[:, 0],
                             means[:, 2] + coeffs[:, 1] * x[:, 0] + coeffs[:, 2] * x[:, 1]], dim=1)
    half_bin = 1.0 / (2 ** n_bits - 1)
    centered = x - means
    inv_scale = torch.exp(-log_scales)
    plus_in = inv_scale * (centered + half_bin)
    min_in = inv_scale * (centered - half_bin)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log σ(plus_in): the left tail
    log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - σ(min_in)): the right tail
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_scale * centered
    # Density at the bin centre times the bin width, where the bin mass underflows.
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in) - math.log(1.0 / (2 * half_bin))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min,
                    torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                log_pdf_mid)))  # (N, C, M, H, W)
    log_probs = log_probs.sum(dim=1) + F.log_softmax(logits, dim=1)  # (N, M, H, W)
    log_likelihood = torch.logsumexp(log_probs, dim=1).sum(dim=(1, 2))  # (N,)
    return -log_likelihood / (c * h * w)


def dmol_sample(params: torch.Tensor, n_channels: int, n_bits: int = 8, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw images from DMOL parameters: (N, M(1+3C), H, W) -> (N, C, H, W) float values on the
    n-bit grid in [-1, 1] (exactly the levels `dmol_nats_per_dim` scores; `dmol_grid_to_uint8`
    turns them into pixels).

    One component per pixel (Gumbel-max), a logistic draw per channel, each channel rounded to
    its bin before it conditions the next one (the likelihood conditions on quantised values).
    `temperature` scales both the Gumbel and the logistic noise: 1 samples the model, 0 gives the
    mean of the most likely component, deterministically.
    """
    dtype = torch.promote_types(params.dtype, torch.float32)
    params = params.to(dtype)
    logits, means, log_scales, coeffs = _dmol_split(params, n_channels)
    n, m, h, w = logits.shape

    def uniform(shape):
        u = torch.rand(shape, generator=generator, device=params.device, dtype=dtype)
        return u * (1.0 - 2e-5) + 1e-5  # keep away from 0 and 1

    gumbel = -torch.log(-torch.log(uniform((n, m, h, w))))
    component = torch.argmax(logits + temperature * gumbel, dim=1)  # (N, H, W)
    index = component[:, None, None].expand(n, n_channels, 1, h, w)
    pick = lambda t: torch.gather(t, 2, index).squeeze(2)  # noqa: E731  (N, C, H, W)
    means, log_scales, coeffs = pick(means), pick(log_scales), pick(coeffs)
    u = uniform((n, n_channels, h, w))
    draw = means + torch.exp(log_scales) * temperature * (torch.log(u) - torch.log1p(-u))

    top = 2 ** n_bits - 1

    def quantise(v):
        return torch.round((v.clamp(-1.0, 1.0) + 1.0) * (top / 2.0)) * (2.0 / top) - 1.0

    x0 = quantise(draw[:, 0])
    if n_channels == 1:
        return x0[:, None]
    x1 = quantise(draw[:, 1] + coeffs[:, 0] * x0)
    x2 = quantise(draw[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1)
    return torch.stack([x0, x1, x2], dim=1)
