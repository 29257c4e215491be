"""Probability tables for entropy coding with the models: pure tensor math, no coder.

Lossless coding turns a model's likelihood into a code (arithmetic / range coding: Witten et al.
1987; bits-back coding with ANS: Townsend et al. 2019, "Practical Lossless Compression with Latent
Variables using Bits Back Coding", Section 2; hierarchical latents: Townsend et al. 2020,
"HiLLoC", Section 3). The entropy coder (constriction) quantizes these tables to fixed point;
the encoder and the decoder must hand it identical floats, so both compute them here, through
the same functions, from identical inputs.

* `categorical_table`: a 256-way softmax as float64 probabilities (PixelCNN sub-pixels).
* `dmol_table`: the discretized mixture of logistics (`models.likelihoods`) of one image
  channel as a 256-entry table per pixel. RGB channels are coupled (the G and B means depend on
  the R and G values, and the mixture weights on how well each component explained the earlier
  channels of the pixel), so channel c is tabulated given the values of channels < c: coding
  channel by channel codes exactly the joint DMoL.
* `latent_bins` / `latent_value`: latents discretized into bins of width δ·σ_p centred on the
  prior mean μ_p (one bin per integer k). In bin units the prior is N(0, 1/δ²) for every latent,
  the posterior N((μ_q - μ_p)/(δσ_p), σ_q/(δσ_p)), and bin k holds z = μ_p + δσ_p·k.

Capabilities a family declares for the codecs (`models.registry.Family.capabilities`):

* `STEPWISE_PROBABILITIES`: an autoregressive model with `model.coding_steps(n, code)`, which
  visits every coding step of a batch of n images in order, hands `code(table, c, i, j)` the
  (n, 256) float64 probabilities of sub-pixel (c, i, j) and continues with the (n,) uint8 values
  it returns (the true pixels when encoding, the decoded ones when decoding); returns the images.
* `TOP_DOWN_LATENTS`: a hierarchical VAE with `model.encoder(model._network_input(images))`
  (activations per resolution) and `model.decoder(n, activations, choose_latent,
  posterior_blocks)` calling `choose_latent(j, posterior or None, prior) -> z` per top-down block
  in order and returning DMoL parameters, its blocks `model.decoder.dec_blocks[j].resolution`,
  and `model.config` with `n_top_down`, `zdim`, `image_channels` and `n_bits`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.likelihoods import _dmol_split

STEPWISE_PROBABILITIES = "stepwise_probabilities"
TOP_DOWN_LATENTS = "top_down_latents"

N_VALUES = 256  # 8-bit sub-pixels
LOGSTD_MIN = -30.0  # a std of ~1e-13 still leaves constriction a finite, positive width


def categorical_table(logits: torch.Tensor) -> torch.Tensor:
    """(n, 256) logits -> (n, 256) float64 probabilities (softmax in float64)."""
    return torch.softmax(logits.double(), dim=-1)


def _cdf(values: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Logistic CDF at `values`, broadcast against means / log scales."""
    return torch.sigmoid((values - means) * torch.exp(-log_scales))


def _observed_mass(values: torch.Tensor, means: torch.Tensor,
                   log_scales: torch.Tensor) -> torch.Tensor:
    """Mass of each component (N, M, H, W) on the bin of the observed uint8 value (N, 1, H, W):
    [(v - ½)/127.5 - 1, (v + ½)/127.5 - 1], the outer bins open to ±∞ as in
    `dmol_nats_per_dim`."""
    centre = values.to(means.dtype) / 127.5 - 1.0
    upper = torch.where(values == N_VALUES - 1, torch.ones_like(centre),
                        _cdf(centre + 1.0 / 255.0, means, log_scales))
    lower = torch.where(values == 0, torch.zeros_like(centre),
                        _cdf(centre - 1.0 / 255.0, means, log_scales))
    return (upper - lower).clamp(min=0.0)


def _mixture_table(weights: torch.Tensor, means: torch.Tensor,
                   log_scales: torch.Tensor) -> torch.Tensor:
    """Σ_m w_m · (bin masses of component m): (N, M, H, W) each -> (N, H, W, 256), one
    component at a time (a (N, M, H, W, 256) intermediate would be M times larger)."""
    v = torch.arange(1, N_VALUES, dtype=means.dtype, device=means.device)
    edges = (v - 0.5) / 127.5 - 1.0  # the 255 inner bin edges
    cdf = None
    for m in range(means.shape[1]):
        term = weights[:, m, ..., None] * _cdf(edges, means[:, m, ..., None],
                                               log_scales[:, m, ..., None])
        cdf = term if cdf is None else cdf.add_(term)
    zeros = cdf.new_zeros(cdf.shape[:-1] + (1,))
    ones = cdf.new_ones(cdf.shape[:-1] + (1,))
    return torch.diff(torch.cat([zeros, cdf, ones], dim=-1), dim=-1).clamp_(min=0.0)


def _channel_means(means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor,
                   channel: int) -> torch.Tensor:
    """Component means of `channel` (N, M, H, W): μ_G += c0·x_R, μ_B += c1·x_R + c2·x_G."""
    mean = means[:, channel]
    if channel == 1:
        mean = mean + coeffs[:, 0] * x[:, 0:1]
    elif channel == 2:
        mean = mean + coeffs[:, 1] * x[:, 0:1] + coeffs[:, 2] * x[:, 1:2]
    return mean


def dmol_table(params: torch.Tensor, previous: torch.Tensor, channel: int,
               n_channels: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Probabilities of the 256 values of image channel `channel` at every pixel, given the
    values of the channels before it.

    params: (N, M(1+3C), H, W) DMoL parameters (the layout of `models.likelihoods`);
    previous: uint8 (N, channel, H, W), the values of channels 0..channel-1 (empty for 0).
    Returns (N, H, W, 256) in `dtype`: float32 is 4x faster on a CPU and still resolves every
    bin mass a 24-bit coder can represent (2^-24 ≈ 6e-8). Only 8-bit likelihoods.
    """
    assert 0 <= channel < n_channels and n_channels in (1, 3), (channel, n_channels)
    assert previous.shape[1] == channel, (previous.shape, channel)
    logits, means, log_scales, coeffs = _dmol_split(params.to(dtype), n_channels)
    x = previous.to(dtype) / 127.5 - 1.0  # (N, channel, H, W) on the DMoL grid
    log_weights = F.log_softmax(logits, dim=1)  # (N, M, H, W)
    for c in range(channel):  # mixture weights given the values already coded
        mass = _observed_mass(previous[:, c:c + 1], _channel_means(means, coeffs, x, c),
                              log_scales[:, c])
        log_weights = log_weights + torch.log(mass.clamp(min=torch.finfo(dtype).tiny))
    weights = torch.softmax(log_weights, dim=1)
    return _mixture_table(weights, _channel_means(means, coeffs, x, channel),
                          log_scales[:, channel])


# ------------------------------------------------------------------------ latent bins


def latent_bins(posterior: tuple[torch.Tensor, torch.Tensor] | None,
                prior: tuple[torch.Tensor, torch.Tensor],
                bin_width: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The posterior in bin units: (mean, std), each float64 shaped like the latent.

    posterior, prior: (mean, log std) tensors (N, zdim, R, R). None when no posterior is given.
    In bin units the prior is N(0, 1/bin_width²) whatever μ_p and σ_p are."""
    if posterior is None:
        return None
    q_mean, q_logstd = (t.double() for t in posterior)
    p_mean, p_logstd = (t.double() for t in prior)
    scale = torch.exp(-p_logstd.clamp(min=LOGSTD_MIN)) / bin_width  # 1 / (δ σ_p)
    mean = (q_mean - p_mean) * scale
    std = torch.exp(q_logstd.clamp(min=LOGSTD_MIN)) * scale
    return mean, std


def latent_value(bins: torch.Tensor, prior: tuple[torch.Tensor, torch.Tensor],
                 bin_width: float) -> torch.Tensor:
    """z at the centre of integer bins k (N, zdim, R, R): μ_p + δ σ_p k, in the prior's dtype."""
    p_mean, p_logstd = prior
    z = p_mean.double() + torch.exp(p_logstd.double().clamp(min=LOGSTD_MIN)) * bin_width \
        * bins.double()
    return z.to(p_mean.dtype)
