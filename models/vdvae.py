"""Very Deep VAE (Child, "Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them
on Images", ICLR 2021): a bottom-up encoder and a top-down decoder of L stochastic blocks with
diagonal Gaussian posteriors and priors, a discretized mixture of logistics likelihood, and the
paper's effective-stochastic-depth ablation (`effective_depth`).

Everything is in nats inside; user-visible names carry their unit. The structure lives in
`vdvae_config.py` (config, validation, parameter count), `vdvae_blocks.py` (modules) and
`vdvae_presets.py` (named configurations).

Effective stochastic depth G: the L top-down blocks form G contiguous groups (sizes differ by at
most one, larger groups first). Every block of a group computes its posterior q, its prior p and
its prior feature update `xpp` from the group-start state: the input of the group's first block
(after that block's mix-in), nearest-upsampled to the block's resolution and cut to its width when
the group crosses a resolution. The feature update is added to the block's own running state, and
z_proj, the resblock and the `RmS` mix-ins run in order as usual. So the latents of a group are
conditionally independent given earlier groups, parameters and FLOPs do not depend on G, and
G = L is exactly the published model.

Latents in and out, as the reference's `forward_get_latents` and `forward_manual_latents`:
`encode` returns one posterior draw per block, `decode` runs the top-down pass from given latents
(the rest from the prior at a temperature, t multiplying the prior std as in the paper's
reduced-temperature samples, Section 5.2) and `params_to_images` turns its DMoL parameters into
pixels; `sample` and `sample_with_fixed_latents` are these three composed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from models.likelihoods import (dmol_grid_to_uint8, dmol_nats_per_dim, dmol_sample,
                                gaussian_kl, gaussian_log_density, nats_to_bits,
                                uint8_to_dmol_target)
from models import coding, registry
from models.vdvae_blocks import Decoder, Encoder, Gaussian
from models.vdvae_config import VDVAEConfig, parameter_count, width_for_param_budget
from models.vdvae_presets import PRESETS

__all__ = ["VDVAE", "VDVAEConfig", "PRESETS", "parameter_count", "width_for_param_budget"]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Latent statistics in at least float32 (they come out of bfloat16 convs under autocast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class VDVAE(nn.Module):
    """`model(images, noise=None)` -> dict of (N,) `elbo_nats_per_dim`, `distortion_nats_per_dim`,
    `rate_nats_per_dim` and (N, L) `kl_nats_per_layer` (nats per image, per top-down block);
    with `posterior_means=True` also `posterior_means`, a list of (N, zdim, R, R) μ_q."""

    def __init__(self, config: VDVAEConfig, channels_last: bool = True):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # NHWC activations: oneDNN skips its layout reorders (a faster CPU step than NCHW,
        # docs/benchmarks.md), and it is cuDNN's preferred layout for bf16.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.image_channels, c.image_size, c.image_size)

    def use_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each top-down block in backward instead of storing its activations: less
        memory for the deep presets, the same gradients, one more decoder forward per step."""
        self.decoder.activation_checkpointing = bool(enabled)

    @property
    def n_dims(self) -> int:
        return math.prod(self.image_shape)

    # ------------------------------------------------------------------------------- inputs

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or \
                tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images: expected uint8 (N, {', '.join(map(str, self.image_shape))})"
                             f", got {images.dtype} {tuple(images.shape)}")

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.decoder.gain.dtype)
        if self.config.input_unit_interval:
            x = x / 255.0
        x = (x + self.config.input_shift) * self.config.input_scale  # (N, C, H, W)
        return x.contiguous(memory_format=self.memory_format)

    def _noise_list(self, noise, n: int, generator, device) -> list[torch.Tensor]:
        """The standard-normal ε of every top-down block: given, or drawn from `generator`."""
        if noise is None:
            dtype = self.decoder.gain.dtype
            return [torch.randn(self._latent_shape(n, j), generator=generator, device=device,
                                dtype=dtype) for j in range(self.config.n_top_down)]
        self._check_block_tensors("noise", noise, n, count=self.config.n_top_down)
        return list(noise)

    def _temperatures(self, temperature) -> list[float]:
        """One latent temperature per top-down block, from one value or a list of L."""
        n_layers = self.config.n_top_down
        if isinstance(temperature, (int, float)):
            temperature = [float(temperature)] * n_layers
        else:
            temperature = [float(t) for t in temperature]
        if len(temperature) != n_layers:
            raise ValueError(f"temperature: give one value or {n_layers} (one per top-down "
                             f"block), got {len(temperature)}")
        if not all(math.isfinite(t) and t >= 0 for t in temperature):
            raise ValueError(f"temperature: must be finite and >= 0, got {temperature}")
        return temperature

    # ------------------------------------------------------------------------- the ELBO

    def forward(self, images: torch.Tensor, noise: Sequence[torch.Tensor] | None = None,
                generator: torch.Generator | None = None,
                posterior_means: bool = False) -> dict[str, torch.Tensor]:
        """Negative ELBO with one posterior sample z = μ_q + σ_q·ε and analytic KLs (Child 2021:
        no KL warm-up, no free bits).

        images: uint8 (N, C, H, W). noise: optional ε per top-down block (N, zdim, R, R), for
        common random numbers; otherwise drawn from `generator` (or the global RNG).
        posterior_means: also return `posterior_means`, the μ_q of every block (N, zdim, R, R)
        at this pass's sampled path (block i's q conditioned on the z_<i drawn here), for
        active-unit counts from the ELBO pass itself; the other outputs are unchanged.
        """
        self._check_images(images)
        n = images.shape[0]
        activations = self.encoder(self._network_input(images))
        eps = self._noise_list(noise, n, generator, images.device)
        kls: list[torch.Tensor] = []
        means: list[torch.Tensor] = []

        def posterior_draw(j: int, posterior: Gaussian | None, prior: Gaussian) -> torch.Tensor:
            q_mean, q_logstd = map(_wide, posterior)
            p_mean, p_logstd = map(_wide, prior)
            kls.append(gaussian_kl(q_mean, q_logstd, p_mean, p_logstd).sum(dim=(1, 2, 3)))
            if posterior_means:
                means.append(q_mean.detach())
            return q_mean + torch.exp(q_logstd) * eps[j]

        params = self.decoder(n, activations, posterior_draw, self.config.n_top_down)
        distortion = dmol_nats_per_dim(uint8_to_dmol_target(images, self.config.n_bits),
                                       params, self.config.n_bits)  # (N,)
        kl_per_layer = torch.stack(kls, dim=1)  # (N, L) nats per image
        rate = kl_per_layer.sum(dim=1) / self.n_dims
        out = {"elbo_nats_per_dim": distortion + rate,
               "distortion_nats_per_dim": distortion,
               "rate_nats_per_dim": rate,
               "kl_nats_per_layer": kl_per_layer}
        if posterior_means:
            out["posterior_means"] = means
        return out

    def loss(self, images: torch.Tensor, noise: Sequence[torch.Tensor] | None = None,
             generator: torch.Generator | None = None,
             posterior_means: bool = False) -> dict[str, torch.Tensor]:
        """Registry interface: `forward` plus `loss_nats_per_dim`, the negative ELBO per dim."""
        out = self(images, noise=noise, generator=generator, posterior_means=posterior_means)
        out["loss_nats_per_dim"] = out["elbo_nats_per_dim"]
        return out

    # ------------------------------------------------------------------ importance weighting

    @torch.no_grad()
    def log_importance_weights_nats(self, images: torch.Tensor,
                                    noise: Sequence[torch.Tensor] | None = None,
                                    generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) per image (N,), in nats, for one posterior draw,
        with full Gaussian log densities (its expectation is the ELBO in nats per image)."""
        self._check_images(images)
        n = images.shape[0]
        activations = self.encoder(self._network_input(images))
        return self._log_weights(images, activations, self._noise_list(noise, n, generator,
                                                                       images.device))

    def _log_weights(self, images, activations, eps) -> torch.Tensor:
        n = images.shape[0]
        # Σ_j log q(z_j | x) - log p(z_j), nats per image
        log_ratio = torch.zeros(n, device=images.device, dtype=self.decoder.gain.dtype)

        def posterior_draw(j: int, posterior: Gaussian | None, prior: Gaussian) -> torch.Tensor:
            nonlocal log_ratio
            q_mean, q_logstd = map(_wide, posterior)
            p_mean, p_logstd = map(_wide, prior)
            z = q_mean + torch.exp(q_logstd) * eps[j]
            log_ratio = log_ratio + (gaussian_log_density(z, q_mean, q_logstd)
                                     - gaussian_log_density(z, p_mean, p_logstd)).sum((1, 2, 3))
            return z

        params = self.decoder(n, activations, posterior_draw, self.config.n_top_down)
        target = uint8_to_dmol_target(images, self.config.n_bits)
        log_px = -dmol_nats_per_dim(target, params, self.config.n_bits) * self.n_dims
        return log_px - log_ratio

    @torch.no_grad()
    def iw_nll_bits_per_dim(self, images: torch.Tensor, k: int, chunk_size: int = 16,
                            generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted NLL bound (Burda et al. 2016), k posterior samples, (N,) bits/dim.

        -log (1/k) Σ_i w_i with w_i = p(x, z_i) / q(z_i | x); never above the ELBO in expectation,
        equal to the single-sample ELBO estimate for k = 1, tightening as k grows. The encoder runs
        once; the decoder sees at most `chunk_size` samples of every image per pass.
        """
        self._check_images(images)
        if k < 1 or chunk_size < 1:
            raise ValueError(f"k and chunk_size must be >= 1, got k={k}, chunk_size={chunk_size}")
        n = images.shape[0]
        activations = self.encoder(self._network_input(images))
        log_weights = []
        for start in range(0, k, chunk_size):
            c = min(chunk_size, k - start)
            acts = {r: a.repeat(c, 1, 1, 1) for r, a in activations.items()}
            reps = images.repeat(c, 1, 1, 1)
            eps = self._noise_list(None, c * n, generator, images.device)
            log_weights.append(self._log_weights(reps, acts, eps).reshape(c, n))
        log_weights = torch.cat(log_weights, dim=0)  # (k, N)
        log_mean = torch.logsumexp(log_weights, dim=0) - math.log(k)
        return nats_to_bits(-log_mean / self.n_dims)

    # ----------------------------------------------------------------------------- latents

    @torch.no_grad()
    def posterior_means(self, images: torch.Tensor) -> list[torch.Tensor]:
        """μ_q of every top-down block, (N, zdim, R, R) each, propagating z = μ_q (ε = 0) down
        the hierarchy so the result is deterministic (the mean path; the evaluator's active-unit
        counts use the ELBO pass's sampled path instead: `loss(..., posterior_means=True)`)."""
        self._check_images(images)
        n = images.shape[0]
        activations = self.encoder(self._network_input(images))
        means: list[torch.Tensor] = []

        def take_mean(j: int, posterior: Gaussian | None, prior: Gaussian) -> torch.Tensor:
            means.append(_wide(posterior[0]))
            return means[-1]

        self.decoder(n, activations, take_mean, self.config.n_top_down)
        return means

    # ------------------------------------------------------------------ latents in and out

    def block_resolutions(self) -> list[int]:
        """The resolution R of every top-down block, in block order (non-decreasing): latent j
        is (N, zdim, R_j, R_j)."""
        return [block.resolution for block in self.decoder.dec_blocks]

    def _latent_shape(self, n: int, j: int) -> tuple[int, int, int, int]:
        r = self.decoder.dec_blocks[j].resolution
        return (n, self.config.zdim, r, r)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None,
               noise: Sequence[torch.Tensor] | None = None,
               n_blocks: int | None = None) -> list[torch.Tensor]:
        """One posterior draw per top-down block: a list of z_j = μ_q + σ_q·ε_j, each
        (N, zdim, R_j, R_j), in block order (the reference's `forward_get_latents`, the `z` of
        each block's stats).

        Along the sampled path: block j's q(z_j | x, z_<j) comes from the state the z_<j drawn
        just before produced, as in the ELBO pass, so with the same ε (`noise`, or the same
        `generator` seed) these are the latents `forward` uses. With effective depth G < L,
        block j's q reads its group's start state: it depends on earlier groups' latents only.

        n_blocks: only the first n_blocks blocks (default all L), the same draws as the first
        n_blocks of a full encode, ε drawn for those blocks only. noise: their ε, (N, zdim, R_j,
        R_j) each; otherwise drawn from `generator` in block order. Differentiable.
        """
        self._check_images(images)
        n_layers = self.config.n_top_down
        k = n_layers if n_blocks is None else n_blocks
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n_layers:
            raise ValueError(f"n_blocks: must be an integer in 0..{n_layers}, got {n_blocks!r}")
        n = images.shape[0]
        if noise is not None:
            self._check_block_tensors("noise", noise, n, count=k)
        activations = self.encoder(self._network_input(images))
        latents: list[torch.Tensor] = []

        def posterior_draw(j: int, posterior: Gaussian | None, prior: Gaussian) -> torch.Tensor:
            if j >= k:  # past the encoded blocks: any latent will do, the output is discarded
                return _wide(prior[0])
            q_mean, q_logstd = map(_wide, posterior)
            eps = noise[j] if noise is not None else torch.randn(
                q_mean.shape, generator=generator, device=q_mean.device, dtype=q_mean.dtype)
            latents.append(q_mean + torch.exp(q_logstd) * eps)
            return latents[-1]

        self.decoder(n, activations, posterior_draw, posterior_blocks=k)
        return latents

    def decode(self, latents: Sequence[torch.Tensor], n: int | None = None,
               temperature: float | Sequence[float] = 1.0,
               generator: torch.Generator | None = None,
               return_latents: bool = False):
        """The top-down pass from given latents: DMoL parameters (N, M(1+3C), H, W), NCHW (the
        reference's `out_net.forward(decoder.forward_manual_latents(n, latents, t))`, there
        NHWC).

        Blocks j < len(latents) use `latents[j]` verbatim, (N, zdim, R_j, R_j); every later
        block draws z_j = μ_p + σ_p·t_j·ε from its prior given the state so far, ε from
        `generator` in block order (none where t_j = 0: the prior mean). temperature: one value
        or one per block (L; given blocks' entries unused). n: needed only when `latents` is
        empty. With effective depth G < L a block's prior reads its group's start state, so a
        free block does not see a given latent of its own group (later groups do). With
        return_latents, also the L latents used (given, then drawn), to replay or extend a
        draw. Differentiable.
        """
        temperatures = self._temperatures(temperature)
        n = self._check_latents(latents, n)
        given = list(latents)
        used: list[torch.Tensor] = []
        prior_draw = self._prior_draw(temperatures, generator)

        def choose(j: int, posterior: Gaussian | None, prior: Gaussian) -> torch.Tensor:
            used.append(given[j] if j < len(given) else prior_draw(j, None, prior))
            return used[-1]

        params = self.decoder(n, None, choose, posterior_blocks=0)
        return (params, used) if return_latents else params

    def params_to_images(self, params: torch.Tensor, pixel_temperature: float = 1.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """DMoL parameters from `decode` -> uint8 images (N, C, H, W).

        pixel_temperature 1 samples the likelihood; in between, the Gumbel noise that picks the
        component and the logistic noise inside it are both scaled by it. 0 is the mode used by
        figures: at every pixel the most likely mixture component (argmax of its logits) and
        that component's mean, channels coupled in order (RGB), rounded to the n-bit grid; this
        is the modal component's mean, not the mode of the whole mixture. Every pixel
        temperature, 0 included, draws the same uniforms from `generator`, so the generator
        advances alike; at 0 the output does not depend on them.
        """
        c = self.config
        if params.dim() != 4 or tuple(params.shape[1:]) != (c.out_channels, c.image_size,
                                                            c.image_size):
            raise ValueError(f"params: expected DMoL parameters (N, {c.out_channels}, "
                             f"{c.image_size}, {c.image_size}), got {tuple(params.shape)}")
        values = dmol_sample(params, c.image_channels, c.n_bits, pixel_temperature, generator)
        return dmol_grid_to_uint8(values, c.n_bits)

    def _check_block_tensors(self, name: str, tensors: Sequence[torch.Tensor], n: int,
                             count: int) -> None:
        """`tensors` must be the first `count` blocks' (n, zdim, R_j, R_j) tensors."""
        if len(tensors) != count:
            raise ValueError(f"{name}: expected {count} tensors (one per block), got "
                             f"{len(tensors)}")
        for j, t in enumerate(tensors):
            shape = self._latent_shape(n, j)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or \
                    not t.is_floating_point():
                got = (f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor)
                       else type(t).__name__)
                raise ValueError(f"{name}[{j}]: expected a float tensor {shape} (block {j} at "
                                 f"resolution {shape[-1]}), got {got}")

    def _check_latents(self, latents: Sequence[torch.Tensor], n: int | None) -> int:
        """The batch size of a decode call; ValueError naming what does not fit."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n: must be a positive integer, got {n!r}")
        if len(latents) > self.config.n_top_down:
            raise ValueError(f"latents: at most {self.config.n_top_down} (one per top-down "
                             f"block), got {len(latents)}")
        if not latents and n is None:
            raise ValueError("n: needed when latents is empty (the batch size to sample)")
        if n is None:
            n = latents[0].shape[0] if isinstance(latents[0], torch.Tensor) else 0
        self._check_block_tensors("latents", latents, n, len(latents))
        device = self.decoder.gain.device
        for j, z in enumerate(latents):
            if z.device != device:
                raise ValueError(f"latents[{j}]: on {z.device}, but the model is on {device}")
        return n

    # ---------------------------------------------------------------------------- sampling

    def _prior_draw(self, temperatures: list[float], generator):
        def draw(j: int, posterior: Gaussian | None, prior: Gaussian) -> torch.Tensor:
            p_mean, p_logstd = map(_wide, prior)
            if temperatures[j] == 0.0:
                return p_mean
            eps = torch.randn(p_mean.shape, generator=generator, device=p_mean.device,
                              dtype=p_mean.dtype)
            return p_mean + torch.exp(p_logstd) * (temperatures[j] * eps)
        return draw

    @torch.no_grad()
    def sample(self, n: int, temperature: float | Sequence[float] = 1.0,
               generator: torch.Generator | None = None,
               pixel_temperature: float = 1.0) -> torch.Tensor:
        """n unconditional samples, uint8 (n, C, H, W): `decode` from no latents (z_j ~ p with
        std × temperature, one value or one per block), then `params_to_images` at
        `pixel_temperature` (0: the modal component's mean). Latent and pixel temperature 0
        make the output deterministic."""
        params = self.decode([], n=n, temperature=temperature, generator=generator)
        return self.params_to_images(params, pixel_temperature, generator)

    @torch.no_grad()
    def sample_with_fixed_latents(self, images: torch.Tensor, k: int,
                                  temperature: float | Sequence[float] = 1.0,
                                  generator: torch.Generator | None = None,
                                  pixel_temperature: float = 1.0) -> torch.Tensor:
        """One sample per image, uint8 (N, C, H, W): the first k blocks' latents are posterior
        draws given the image (`encode`), the rest come from the prior (`decode`; the paper's
        Figure 4); k = L reconstructs. ε is drawn in block order, then the pixels."""
        self._check_images(images)
        if not 0 <= k <= self.config.n_top_down:
            raise ValueError(f"k: must be in 0..{self.config.n_top_down}, got {k}")
        temperatures = self._temperatures(temperature)
        latents = self.encode(images, generator=generator, n_blocks=k)
        params = self.decode(latents, n=images.shape[0], temperature=temperatures,
                             generator=generator)
        return self.params_to_images(params, pixel_temperature, generator)

    # --------------------------------------------------------------------------- checkpoints

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load weights named as in the reference's released checkpoints (our names are the same).

        Raises ValueError listing missing, unexpected and mis-shaped tensors."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        mis_shaped = sorted(f"{k} {tuple(state_dict[k].shape)} != {tuple(own[k].shape)}"
                            for k in set(own) & set(state_dict)
                            if tuple(state_dict[k].shape) != tuple(own[k].shape))
        if missing or unexpected or mis_shaped:
            def show(names):
                return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8
                                               else "")
            raise ValueError(
                f"state_dict does not fit this VDVAE config: missing {len(missing)} "
                f"[{show(missing)}], unexpected {len(unexpected)} [{show(unexpected)}], "
                f"mis-shaped {len(mis_shaped)} [{show(mis_shaped)}]; check the preset/config")
        self.load_state_dict(state_dict, strict=True)


FAMILY = registry.register(registry.Family(
    name="vdvae", display_name="VDVAE", config_cls=VDVAEConfig, model_cls=VDVAE, presets=PRESETS,
    image_shape=lambda c: (c.image_channels, c.image_size, c.image_size),
    samplers=(registry.Sampler("ancestral", {"temperature": 1.0}, temperature=True),),
    size_field="width", solve_size=width_for_param_budget,
    effective_depth=lambda c: c.effective_depth or c.n_top_down,
    load_weights=VDVAE.load_reference_state_dict,
    # The five released models and the reference's tiny one shipped in examples/vdvae_tiny_cifar.
    reference_presets=("cifar10", "imagenet32", "imagenet64", "ffhq256", "ffhq1024",
                       "cifar10_tiny"),
    capabilities=frozenset({registry.IW_NLL, registry.KL_PER_LAYER, registry.ACTIVE_UNITS,
                            registry.ACTIVATION_CHECKPOINTING, registry.LATENTS,
                            coding.TOP_DOWN_LATENTS})))
