"""VDVAE building blocks (Child 2021, the architecture section; the public reference
implementation's `Block`, `DecBlock`): the bottleneck residual block, the bottom-up encoder and
the top-down decoder.

Module and parameter names follow the released checkpoints of the public reference, so a reference
state dict loads key for key: `encoder.in_conv`, `encoder.enc_blocks.N.c1..c4`,
`decoder.dec_blocks.N.{enc,prior,z_proj,resnet}`, `decoder.bias_xs.N`, `decoder.gain`,
`decoder.bias`, `decoder.out_net.out_conv`. In a top-down block `enc` is the posterior
q(z | x, z_<i) and `prior` the prior p(z | z_<i) together with the feature update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.vdvae_config import VDVAEConfig, encoder_resolutions

Gaussian = tuple[torch.Tensor, torch.Tensor]  # (mean, log std), each (N, zdim, R, R)
# choose_latent(block index, posterior or None, prior) -> z (N, zdim, R, R)
LatentChooser = Callable[[int, "Gaussian | None", Gaussian], torch.Tensor]


def _conv(in_width: int, out_width: int, kernel: int, zero_weights: bool = False) -> nn.Conv2d:
    """PyTorch's default weight init, zero bias (and zero weights for the prior's last conv)."""
    conv = nn.Conv2d(in_width, out_width, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.bias)
    if zero_weights:
        nn.init.zeros_(conv.weight)
    return conv


class Bottleneck(nn.Module):
    """GELU → 1×1 → GELU → 3×3 → GELU → 3×3 → GELU → 1×1, optional residual add and pooling.

    At resolutions ≤ 2 the two 3×3 convs are 1×1 (`use_3x3=False`).
    """

    def __init__(self, in_width: int, middle_width: int, out_width: int, *, residual: bool,
                 use_3x3: bool, down_rate: int | None = None, zero_last: bool = False):
        super().__init__()
        kernel = 3 if use_3x3 else 1
        self.residual, self.down_rate = residual, down_rate
        self.c1 = _conv(in_width, middle_width, 1)
        self.c2 = _conv(middle_width, middle_width, kernel)
        self.c3 = _conv(middle_width, middle_width, kernel)
        self.c4 = _conv(middle_width, out_width, 1, zero_weights=zero_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in, R, R) -> (N, out, R', R')
        return self.from_activated(F.gelu(x), x)

    def from_activated(self, activated: torch.Tensor, x: torch.Tensor | None = None):
        """The block given GELU(x) already computed (shared by the prior and the posterior);
        `x` is needed only for the residual add."""
        h = self.c4(self._inner(activated))
        out = x + h if self.residual else h
        if self.down_rate:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


    def _inner(self, *activated: torch.Tensor) -> torch.Tensor:
        """GELU(c3(GELU(c2(GELU(c1(cat(activated))))))), the input to c4. With several inputs
        c1 is one conv per input with its slice of the weight, summed: the same map without
        building the concatenation, whose backward costs more on CPU (docs/benchmarks.md)."""
        if len(activated) == 1:
            h = self.c1(activated[0])
        else:
            h, start = None, 0
            for part in activated:
                stop = start + part.shape[1]
                term = F.conv2d(part, self.c1.weight[:, start:stop],
                                self.c1.bias if start == 0 else None)
                h, start = (term if h is None else h + term), stop
            assert start == self.c1.in_channels, (start, self.c1.in_channels)
        h = self.c2(F.gelu(h))
        return F.gelu(self.c3(F.gelu(h)))

    def split_heads(self, sizes: list[int], *activated: torch.Tensor) -> list[torch.Tensor]:
        """A residual-free block's output cut into channel groups of `sizes`, each from its own
        slice of c4: dense outputs, where splitting one output gives strided views (slow
        elementwise ops downstream) whose backward concatenates."""
        assert not self.residual and not self.down_rate and sum(sizes) == self.c4.out_channels
        h, outputs, start = self._inner(*activated), [], 0
        for size in sizes:
            outputs.append(F.conv2d(h, self.c4.weight[start:start + size],
                                    self.c4.bias[start:start + size]))
            start += size
        return outputs


def _scale_(weight: torch.Tensor, factor: float) -> None:
    with torch.no_grad():
        weight.mul_(factor)


class Encoder(nn.Module):
    """Bottom-up path: activations per resolution, zero-padded to that resolution's width."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        width = config.width_at(config.image_size)
        self.in_conv = _conv(config.image_channels, width, 3)
        layers = config.encoder_layers
        blocks = []
        for layer in layers:
            block = Bottleneck(config.width_at(layer.resolution),
                               config.middle_width(layer.resolution),
                               config.width_at(layer.resolution), residual=True,
                               use_3x3=layer.resolution > 2, down_rate=layer.down_rate)
            _scale_(block.c4.weight, math.sqrt(1.0 / len(layers)))
            blocks.append(block)
        self.enc_blocks = nn.ModuleList(blocks)
        self._widths = {r: config.width_at(r) for r in encoder_resolutions(config)}

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.in_conv(x)  # (N, w, H, W)
        activations = {x.shape[-1]: x}
        for block in self.enc_blocks:
            x = block(x)
            missing = self._widths[x.shape[-1]] - x.shape[1]
            if missing > 0:
                x = F.pad(x, (0, 0, 0, 0, 0, missing))
            activations[x.shape[-1]] = x  # the last block at a resolution wins
        return activations


class TopDownBlock(nn.Module):
    """One stochastic layer: posterior, prior with feature update, latent projection, resblock."""

    def __init__(self, config: VDVAEConfig, resolution: int, mixin: int | None, n_blocks: int):
        super().__init__()
        self.resolution, self.mixin = resolution, mixin
        self.width, self.zdim = config.width_at(resolution), config.zdim
        middle, use_3x3 = config.middle_width(resolution), resolution > 2
        self.enc = Bottleneck(2 * self.width, middle, 2 * self.zdim, residual=False,
                              use_3x3=use_3x3)
        self.prior = Bottleneck(self.width, middle, 2 * self.zdim + self.width, residual=False,
                                use_3x3=use_3x3, zero_last=True)
        self.z_proj = _conv(self.zdim, self.width, 1)
        _scale_(self.z_proj.weight, math.sqrt(1.0 / n_blocks))
        self.resnet = Bottleneck(self.width, middle, self.width, residual=True, use_3x3=use_3x3)
        _scale_(self.resnet.c4.weight, math.sqrt(1.0 / n_blocks))

    # Both nets start with GELU of their input; they take it precomputed: GELU(state) is shared
    # by the two and GELU(activation) by every block at a resolution (GELU(cat) = cat(GELU)).
    def posterior(self, activated_state: torch.Tensor,
                  activated_activation: torch.Tensor) -> Gaussian:
        # enc reads cat([state, activation]); GELU(cat) = cat(GELU), and c1 takes the two parts
        mean, logstd = self.enc.split_heads([self.zdim, self.zdim], activated_state,
                                            activated_activation)  # (N, zdim, R, R) each
        return mean, logstd

    def prior_and_features(self, activated_state: torch.Tensor) -> tuple[torch.Tensor,
                                                                           torch.Tensor,
                                                                           torch.Tensor]:
        mean, logstd, features = self.prior.split_heads([self.zdim, self.zdim, self.width],
                                                        activated_state)
        return mean, logstd, features

    def next_state(self, x: torch.Tensor, features: torch.Tensor,
                   z: torch.Tensor) -> torch.Tensor:
        """The block's output state: x + feature update + projected latent, then the resblock."""
        return self.resnet(x + features + self.z_proj(z))


def resize_state(state: torch.Tensor, resolution: int, width: int) -> torch.Tensor:
    """Cut (or zero-pad) a decoder state to `width` channels, then nearest-upsample it to
    `resolution`."""
    if state.shape[1] > width:
        state = state[:, :width]
    elif state.shape[1] < width:
        state = F.pad(state, (0, 0, 0, 0, 0, width - state.shape[1]))
    if state.shape[-1] != resolution:
        state = F.interpolate(state, size=(resolution, resolution), mode="nearest")
    return state


class DmolHead(nn.Module):
    """The 1×1 conv to DMOL parameters (named `out_net.out_conv` as in the checkpoints)."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.out_conv = _conv(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(x)


class Decoder(nn.Module):
    """Top-down path with optional grouping of blocks (effective stochastic depth)."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        layers = config.decoder_layers
        self.dec_blocks = nn.ModuleList(
            TopDownBlock(config, layer.resolution, layer.mixin, len(layers)) for layer in layers)
        self.bias_resolutions = config.bias_resolutions
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, config.width_at(r), r, r)) for r in self.bias_resolutions)
        width = config.width_at(config.image_size)
        self.gain = nn.Parameter(torch.ones(1, width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.out_net = DmolHead(width, config.out_channels)
        self.image_size = config.image_size
        self.groups = config.groups
        # Recompute each top-down block's nets in backward instead of keeping their activations
        # (VDVAE.use_activation_checkpointing); only while gradients are being recorded.
        self.activation_checkpointing = False

    def _run(self, fn, *args):
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _block_input(self, block: TopDownBlock, states: dict[int, torch.Tensor],
                     n: int) -> torch.Tensor:
        x = states.get(block.resolution)
        if x is None:  # a resolution above no_bias_above starts from zeros
            x = self.gain.new_zeros(n, block.width, block.resolution, block.resolution)
        if block.mixin is not None:  # broadcasts a (1, w, R, R) bias over the batch
            return x + resize_state(states[block.mixin], block.resolution, block.width)
        if x.shape[0] != n:
            # A real copy, not an expanded view of the bias parameter: views of parameters made
            # under no_grad break FlopCounterMode's module hooks. Usually the (N, w, 1, 1) top.
            x = x.repeat(n, 1, 1, 1)
        return x

    def forward(self, n: int, activations: dict[int, torch.Tensor] | None,
                choose_latent: LatentChooser, posterior_blocks: int) -> torch.Tensor:
        """Run the top-down path for a batch of n; returns DMOL parameters (N, M(1+3C), H, W).

        Blocks `j < posterior_blocks` compute their posterior from `activations`; each block's
        latent is `choose_latent(j, posterior or None, prior)`.

        Grouping (the depth ablation): inside a group every block computes q, p and the feature
        update from the state at the start of the group (the first block's input, after its
        mix-in), cut to the block's width and nearest-upsampled to its resolution. The feature
        update is then added to the block's own running state and the deterministic path (z_proj,
        resblock, mix-ins) runs in order, so with one block per group this is the usual decoder.

        With `activation_checkpointing` the posterior, the prior and the state update of every
        block are recomputed in backward (the same values: they hold no randomness).
        """
        states = dict(zip(self.bias_resolutions, self.bias_xs))
        activated_acts: dict[int, torch.Tensor] = {}  # GELU(encoder activation), per resolution
        for group in self.groups:
            group_start = None  # GELU of the group-start state
            for j in group:
                block = self.dec_blocks[j]
                x = self._block_input(block, states, n)  # (N, w, R, R)
                if group_start is None:
                    group_start = cond = F.gelu(x)
                else:  # GELU commutes with nearest upsampling, channel cuts and zero-padding
                    cond = resize_state(group_start, block.resolution, block.width)
                posterior = None
                if j < posterior_blocks:
                    res = block.resolution
                    if res not in activated_acts:
                        activated_acts[res] = F.gelu(activations[res])
                    posterior = self._run(block.posterior, cond, activated_acts[res])
                prior_mean, prior_logstd, features = self._run(block.prior_and_features, cond)
                # Outside the recomputed regions: the latent draw and the caller's KL record.
                z = choose_latent(j, posterior, (prior_mean, prior_logstd))
                states[block.resolution] = self._run(block.next_state, x, features, z)
        x = states[self.image_size]
        return self.out_net(x * self.gain + self.bias)
