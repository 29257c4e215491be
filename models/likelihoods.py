"""Likelihood math as small pure functions. Everything here is in nats.

* `nats_to_bits`: the one place nats become bits.
* `gaussian_kl`: analytic KL between diagonal Gaussians given means and log standard deviations
  (VDVAE, Section 3).
* `categorical_nats_per_dim`: the 256-way softmax per sub-pixel of the PixelCNN papers.
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
    nll = F.cross_entropy(logits.float().permute(0, 2, 1, 3, 4), target.long(),
                          reduction="none")  # (N, C, H, W)
    return nll.reshape(n, -1).mean(dim=1)
