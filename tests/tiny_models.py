"""Small stand-ins that implement the model interface of models/registry.py, for the training and
evaluation tests (fast, and with hooks to force a NaN loss or a huge gradient at a given call).

* `TinyConvModel`: per-sub-pixel 256-way softmax from a small conv net on a noisy copy of the
  image (the noise makes its loss draw from the torch RNG, like a VAE's posterior sample).
* `TinyAutoregressive`: the same with `sample(n, method=..., generator=...)`, like the PixelCNN.
* `TinyVAE`: two latent layers with the VAE extras (distortion, rate, per-layer KL, posterior
  means from `loss(images, posterior_means=True)`, `iw_nll_bits_per_dim`,
  `sample(n, temperature=, generator=)`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import registry
from models.likelihoods import categorical_nats_per_dim, gaussian_kl, nats_to_bits


@dataclass(frozen=True)
class TinyConfig:
    channels: int = 1
    size: int = 8
    width: int = 8
    noise_std: float = 0.1
    step_delay_s: float = 0.0


class TinyConvModel(nn.Module):
    def __init__(self, config: TinyConfig = TinyConfig()):
        super().__init__()
        self.config = config
        self.image_shape = (config.channels, config.size, config.size)
        c = config.channels
        self.conv_in = nn.Conv2d(c, config.width, 3, padding=1)
        self.conv_out = nn.Conv2d(config.width, c * 256, 1)
        self.calls = 0
        self.poison: dict[int, str] = {}  # loss call index (0-based) -> "nan" | "huge"

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        x = images.float() / 127.5 - 1.0
        if self.config.noise_std:
            x = x + self.config.noise_std * torch.randn_like(x)
        out = self.conv_out(F.gelu(self.conv_in(x)))  # (N, C*256, H, W)
        return out.view(n, c, 256, h, w)

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.step_delay_s:
            time.sleep(self.config.step_delay_s)
        nats = categorical_nats_per_dim(self.logits(images), images)  # (N,)
        kind = self.poison.get(self.calls) if self.training else None
        if self.training:
            self.calls += 1
        if kind == "nan":
            nats = nats * float("nan")
        elif kind == "huge":
            nats = nats * 1e9
        return {"loss_nats_per_dim": nats}

    def nll(self, images: torch.Tensor) -> torch.Tensor:
        return self.loss(images)["loss_nats_per_dim"]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.conv_in.weight.device
        zeros = torch.zeros((n,) + self.image_shape, dtype=torch.uint8, device=device)
        probs = self.logits(zeros).softmax(dim=2).permute(0, 1, 3, 4, 2).reshape(-1, 256)
        flat = torch.multinomial(probs, 1, generator=generator)
        return flat.view((n,) + self.image_shape).to(torch.uint8)


class TinyAutoregressive(TinyConvModel):
    def sample(self, n: int, method: str = "naive",
               generator: torch.Generator | None = None) -> torch.Tensor:
        assert method in ("naive", "cached"), method
        if method == "naive":  # pretend the naive sampler does more work
            for _ in range(3):
                super().sample(n, generator=generator)
        return super().sample(n, generator=generator)


class TinyVAE(nn.Module):
    """x -> two Gaussian latent layers (1x1 and 2x2, zdim 2) -> per-pixel categorical."""

    def __init__(self, config: TinyConfig = TinyConfig()):
        super().__init__()
        self.config = config
        self.image_shape = (config.channels, config.size, config.size)
        c, s, w = config.channels, config.size, config.width
        self.zdim, self.resolutions = 2, (1, 2)
        self.encoder = nn.Conv2d(c, w, 3, padding=1)
        self.posteriors = nn.ModuleList(nn.Conv2d(w, 2 * self.zdim, 1) for _ in self.resolutions)
        self.decoder = nn.ModuleList(nn.Conv2d(self.zdim, w, 1) for _ in self.resolutions)
        self.out = nn.Conv2d(w, c * 256, 1)
        self.bias = nn.Parameter(torch.zeros(1, w, s, s))

    def _posterior(self, images):
        h = F.gelu(self.encoder(images.float() / 127.5 - 1.0))  # (N, w, H, W)
        return [self.posteriors[i](F.adaptive_avg_pool2d(h, r)).chunk(2, dim=1)
                for i, r in enumerate(self.resolutions)]  # [(mean, logstd)] (N, zdim, R, R)

    def _decode(self, latents):
        x = self.bias
        for i, z in enumerate(latents):
            x = x + F.interpolate(self.decoder[i](z), size=self.config.size, mode="nearest")
        n = latents[0].shape[0]
        c, s = self.config.channels, self.config.size
        return self.out(F.gelu(x)).view(n, c, 256, s, s)

    def _terms(self, images):
        posterior = self._posterior(images)
        latents = [m + torch.exp(ls) * torch.randn_like(m) for m, ls in posterior]
        dims = math.prod(self.image_shape)
        distortion = categorical_nats_per_dim(self._decode(latents), images)  # (N,)
        kl = torch.stack([gaussian_kl(m, ls, torch.zeros_like(m), torch.zeros_like(ls))
                          .flatten(1).sum(1) for m, ls in posterior], dim=1)  # (N, L) per image
        return posterior, latents, distortion, kl

    def loss(self, images, posterior_means=False):
        posterior, _, distortion, kl = self._terms(images)
        rate = kl.sum(1) / math.prod(self.image_shape)
        elbo = distortion + rate
        out = {"loss_nats_per_dim": elbo, "elbo_nats_per_dim": elbo,
               "distortion_nats_per_dim": distortion, "rate_nats_per_dim": rate,
               "kl_nats_per_layer": kl}
        if posterior_means:  # the ACTIVE_UNITS interface (models/registry.py)
            out["posterior_means"] = [mean for mean, _ in posterior]
        return out

    def iw_nll_bits_per_dim(self, images, k, chunk_size=16):
        dims = math.prod(self.image_shape)
        log_weights = []
        for _ in range(k):
            posterior, latents, distortion, _ = self._terms(images)
            log_w = -distortion * dims
            for (m, ls), z in zip(posterior, latents):
                log_q = (-0.5 * ((z - m) / ls.exp()) ** 2 - ls).flatten(1).sum(1)
                log_p = (-0.5 * z ** 2).flatten(1).sum(1)
                log_w = log_w + log_p - log_q
            log_weights.append(log_w)
        log_px = torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(k)
        return nats_to_bits(-log_px / dims)

    def sample(self, n, temperature=1.0, generator=None):
        device = self.bias.device
        latents = [temperature * torch.randn(n, self.zdim, r, r, generator=generator,
                                             device=device) for r in self.resolutions]
        probs = self._decode(latents).softmax(dim=2).permute(0, 1, 3, 4, 2).reshape(-1, 256)
        return torch.multinomial(probs, 1, generator=generator).view(
            (n,) + self.image_shape).to(torch.uint8)


def realish_images(n: int, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 (n, C, size, size) images with structure to learn: blurred blobs on a dark field."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, channels, size // 2, size // 2, generator=generator)
    blobs = F.interpolate(noise, size=size, mode="bilinear", align_corners=False)
    return (blobs.clamp(0, 1) ** 2 * 255).round().to(torch.uint8)


# The families these stand-ins belong to: declared as a real family declares itself
# (models.registry), but not registered, so the registry's names stay pixelcnn and vdvae.
def _shape(config: TinyConfig) -> tuple[int, int, int]:
    return (config.channels, config.size, config.size)


TINY_CONV = registry.Family(name="tiny_conv", config_cls=TinyConfig, model_cls=TinyConvModel,
                            image_shape=_shape, samplers=(registry.Sampler("default"),))
TINY_AUTOREGRESSIVE = registry.Family(
    name="tiny_autoregressive", config_cls=TinyConfig, model_cls=TinyAutoregressive,
    image_shape=_shape, autoregressive=True,
    samplers=(registry.Sampler("naive", {"method": "naive"}),
              registry.Sampler("cached", {"method": "cached"})))
TINY_VAE = registry.Family(
    name="tiny_vae", config_cls=TinyConfig, model_cls=TinyVAE, image_shape=_shape,
    samplers=(registry.Sampler("ancestral", {"temperature": 1.0}, temperature=True),),
    capabilities=frozenset({registry.IW_NLL, registry.KL_PER_LAYER, registry.ACTIVE_UNITS}))
