"""Gated PixelCNN, the autoregressive baseline (van den Oord et al. 2016, "Conditional Image
Generation with PixelCNN Decoders", Section 2; masks from the PixelRNN paper, Section 3.4).

The image is factorised in raster order over pixels and R → G → B inside a pixel. Two stacks remove
the blind spot of stacked masked convolutions (Section 2.2):

* vertical stack: sees only rows strictly above the current one. A (⌊k/2⌋+1)×k convolution over
  rows i-⌊k/2⌋..i of a map that already excludes row i; the first layer reads the image shifted
  down by one row. It sees no channel of the current pixel, so its 1×1 link into the horizontal
  stack needs no channel mask;
* horizontal stack: a 1×(⌊k/2⌋+1) convolution over columns j-⌊k/2⌋..j of the current row. Its
  centre tap is masked across three feature-map groups (R, G, B): mask A in the first layer
  (group c sees image channels < c), mask B later (group c sees groups ≤ c). Every 1×1 conv after
  a gate (residual, skip, output head) is masked B, so output channel c never sees channels ≥ c
  of its own pixel;
* gated unit tanh(W_f * x) ⊙ σ(W_g * x), both halves from one convolution producing 2p maps
  (Section 2.1); residual connections in the horizontal stack only; skip connections summed into
  the output head (ReLU, 1×1 conv, ReLU, 1×1 conv, as in the PixelRNN paper's output stage).

Outputs: `"softmax"`, the paper's 256-way softmax per sub-pixel, logits (N, C, 256, H, W); or
`"dmol"`, PixelCNN++'s discretized mixture of logistics (Salimans et al. 2017, Section 2.1) with
the VDVAE parameter layout (N, M·(1+3C), H, W). With DMOL the whole pixel is predicted at once
from earlier pixels (the mixture's linear coefficients carry R → G → B), so the network uses a
single feature-map group and mask A hides every channel of the current pixel.

The DMOL likelihood and its sampler are `models.likelihoods.dmol_nats_per_dim` / `dmol_sample`.
Sampling (naive and cached, Ramachandran et al. 2017) lives in `models.pixelcnn_sampling`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import coding, likelihoods, pixelcnn_coding, pixelcnn_sampling, registry
from models.pixelcnn_ops import N_VALUES, gate, images_to_input

OUTPUTS = ("softmax", "dmol")


@dataclass(frozen=True)
class GatedPixelCNNConfig:
    """Architecture of a Gated PixelCNN. `n_layers` counts gated layers (the first, mask A, one
    included); `channels` is p, the feature maps per stack; `head_channels=None` means p."""

    image_size: int
    image_channels: int
    n_layers: int = 15
    channels: int = 192
    kernel_size: int = 5
    first_kernel_size: int = 7
    head_channels: int | None = None
    output: str = "softmax"
    num_mixtures: int = 10

    def __post_init__(self):
        def fail(field: str, why: str) -> None:
            raise ValueError(f"GatedPixelCNNConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("image_size", "image_channels", "n_layers", "channels", "kernel_size",
                      "first_kernel_size", "num_mixtures"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, "must be a positive integer")
        if self.image_channels not in (1, 3):
            fail("image_channels", "must be 1 (grey) or 3 (RGB)")
        if self.output not in OUTPUTS:
            fail("output", f"must be one of {', '.join(OUTPUTS)}")
        for field in ("kernel_size", "first_kernel_size"):
            if getattr(self, field) % 2 == 0:
                fail(field, "must be odd (the filter is centred on the current pixel)")
        if self.head_channels is not None and (
                not isinstance(self.head_channels, int) or self.head_channels < 1):
            fail("head_channels", "must be a positive integer or None (same as channels)")
        groups = self.masking_groups
        if self.channels % groups:
            fail("channels", f"must be divisible by {groups} for RGB sub-pixel masking "
                             f"(one feature-map group per colour); try {self.channels // 3 * 3 or 3}")
        if self.head_width % groups:
            fail("head_channels", f"must be divisible by {groups} for RGB sub-pixel masking; "
                                  f"try {self.head_width // 3 * 3 or 3}")

    @property
    def masking_groups(self) -> int:
        """Feature-map groups masked against each other: 3 for a per-sub-pixel RGB softmax."""
        return 3 if self.image_channels == 3 and self.output == "softmax" else 1

    @property
    def head_width(self) -> int:
        return self.channels if self.head_channels is None else self.head_channels

    @property
    def output_channels(self) -> int:
        """Channels of the last 1×1 conv: C·256 logits, or M·(1+3C) DMOL parameters."""
        if self.output == "softmax":
            return self.image_channels * N_VALUES
        return self.num_mixtures * (1 + 3 * self.image_channels)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ImageNet model (Section 3.2): 20 layers, 384 maps, 5×5 filters (first one too).
    # The head width is not given there; we use p.
    "imagenet32": dict(image_size=32, image_channels=3, n_layers=20, channels=384,
                       kernel_size=5, first_kernel_size=5),
    "imagenet64": dict(image_size=64, image_channels=3, n_layers=20, channels=384,
                       kernel_size=5, first_kernel_size=5),
    # CIFAR scale (our choice; the paper gives no CIFAR architecture): 22,099,584 parameters.
    "cifar10": dict(image_size=32, image_channels=3, n_layers=15, channels=192,
                    kernel_size=5, first_kernel_size=7),
    # Small CPU models, sized so that even the naive sampler (one full pass per sub-pixel: 784
    # and 3072 passes for a batch) runs in the test suite; the sampling benchmarks use these.
    # For a model matched to a VDVAE's parameter count use `channels_for_param_budget`.
    "cpu_mnist": dict(image_size=28, image_channels=1, n_layers=3, channels=8,
                      kernel_size=3, first_kernel_size=5, head_channels=8),
    "cpu_cifar": dict(image_size=32, image_channels=3, n_layers=2, channels=6,
                      kernel_size=3, first_kernel_size=5, head_channels=6),
    # Smoke tests: runs in milliseconds.
    "tiny": dict(image_size=8, image_channels=3, n_layers=2, channels=6,
                 kernel_size=3, first_kernel_size=3, head_channels=6),
}


def parameter_count(config: GatedPixelCNNConfig) -> int:
    """Parameters of `GatedPixelCNN(config)` from the layer formula (weights the masks zero
    included: they are stored and counted like any other), without building the model."""
    p, out = config.channels, config.output_channels
    total = 0
    for index in range(config.n_layers):
        c_in = config.image_channels if index == 0 else p
        k = config.first_kernel_size if index == 0 else config.kernel_size
        total += c_in * 2 * p * (k // 2 + 1) * k + 2 * p  # vertical (⌊k/2⌋+1)×k conv
        total += c_in * 2 * p * (k // 2 + 1) + 2 * p      # horizontal 1×(⌊k/2⌋+1) conv
        total += 2 * p * 2 * p                            # vertical → horizontal 1×1, no bias
        total += p * p + p                                # skip 1×1
        if index < config.n_layers - 1:
            total += p * p + p                            # residual 1×1 (unused after the last)
    hidden = config.head_width
    return total + p * hidden + hidden + hidden * out + out


def channels_for_param_budget(target_params: int, **config_fields: Any) -> int:
    """Feature maps p whose parameter count is closest to `target_params` (e.g. a VDVAE's
    402,735), the other fields fixed. p steps by 3 where RGB masking needs it."""
    if "channels" in config_fields:
        raise ValueError("channels_for_param_budget chooses `channels`; leave it out of the fields")
    probe = GatedPixelCNNConfig(channels=3, **config_fields)
    step = probe.masking_groups
    if probe.head_channels is not None and probe.head_channels % step:
        raise ValueError(f"head_channels={probe.head_channels} must be divisible by {step}")

    def count(p: int) -> int:
        return parameter_count(dataclasses.replace(probe, channels=p))

    # The count grows strictly with p: double to bracket the target, then bisect.
    low, high = step, step
    while count(high) < target_params:
        low, high = high, high * 2
    while high - low > step:
        middle = (low + high) // 2 // step * step
        if count(middle) < target_params:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda p: (abs(count(p) - target_params), p))


def group_ids(n_maps: int, groups: int) -> torch.Tensor:
    """Group (0 = R, 1 = G, 2 = B) of each of `n_maps` feature maps: contiguous equal blocks."""
    assert n_maps % groups == 0, (n_maps, groups)
    return torch.arange(n_maps, device="cpu") // (n_maps // groups)


def gate_group_ids(p: int, groups: int) -> torch.Tensor:
    """Groups of a gate conv's 2p outputs, laid out [tanh half (p) | sigmoid half (p)]."""
    return torch.cat([group_ids(p, groups)] * 2)


def centre_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, mask_type: str) -> torch.Tensor:
    """(out, in) 0/1 mask for the tap at the current pixel: A lets group c read groups < c,
    B also lets it read group c."""
    assert mask_type in ("A", "B"), mask_type
    if mask_type == "A":
        return (out_groups[:, None] > in_groups[None, :]).float()
    return (out_groups[:, None] >= in_groups[None, :]).float()


class CausalConv2d(nn.Conv2d):
    """Conv with explicit zero padding (left, right, top, bottom) and an optional fixed 0/1 weight
    mask on the tap that lands on the current pixel (the last column)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int],
                 padding: tuple[int, int, int, int], centre: torch.Tensor | None = None,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel, bias=bias)
        self.causal_padding = padding
        if centre is not None and bool(centre.all()):
            centre = None  # nothing masked: skip the multiply
        if centre is None:
            self.register_buffer("mask", None, persistent=False)
        else:
            assert centre.shape == (out_channels, in_channels), centre.shape
            mask = torch.ones(out_channels, in_channels, *kernel, device="cpu")
            mask[:, :, -1, -1] = centre
            self.register_buffer("mask", mask.to(self.weight.device), persistent=False)

    def masked_weight(self) -> torch.Tensor:
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.causal_padding
        if right > left or bottom > top:  # not a layout of ours; the general (slower) route
            return F.conv2d(F.pad(x, self.causal_padding), self.masked_weight(), self.bias)
        # Pad (top, left) on both sides inside the convolution and drop the trailing outputs that
        # read the extra bottom / right padding: the same values as F.pad then conv, without a
        # padded copy of the input (which also keeps a channels_last input channels_last).
        out = F.conv2d(x, self.masked_weight(), self.bias, padding=(top, left))
        kernel_h, kernel_w = self.kernel_size
        height = x.shape[-2] + top + bottom - kernel_h + 1
        width = x.shape[-1] + left + right - kernel_w + 1
        if (height, width) == tuple(out.shape[-2:]):
            return out
        return _Crop.apply(out, height, width)


class _Crop(torch.autograd.Function):
    """x[..., :height, :width] whose backward pads the gradient in x's memory format (autograd's
    slice backward builds it contiguous, which makes oneDNN reorder every conv's grad_output)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return x[..., :height, :width]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        padded = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device,
                             memory_format=layout).zero_()
        padded[..., :grad.shape[-2], :grad.shape[-1]] = grad
        return padded, None, None


class GatedLayer(nn.Module):
    """One gated layer: both stacks, the vertical → horizontal link, residual and skip."""

    def __init__(self, config: GatedPixelCNNConfig, first: bool, last: bool):
        super().__init__()
        p, groups = config.channels, config.masking_groups
        c_in = config.image_channels if first else p
        k = config.first_kernel_size if first else config.kernel_size
        half = k // 2
        self.first = first
        in_groups = group_ids(c_in, groups)  # for the image with 3 groups: R=0, G=1, B=2
        gate_groups = gate_group_ids(p, groups)
        # The first layer reads the image one row higher: pad half+1 rows on top and drop the
        # extra output row at the bottom; later layers read maps that already exclude row i.
        top = half + 1 if first else half
        self.vertical = CausalConv2d(c_in, 2 * p, (half + 1, k), (half, half, top, 0))
        self.horizontal = CausalConv2d(c_in, 2 * p, (1, half + 1), (half, 0, 0, 0),
                                       centre=centre_mask(gate_groups, in_groups,
                                                          "A" if first else "B"))
        # Unmasked: the vertical stack holds nothing of the current pixel.
        self.vertical_to_horizontal = CausalConv2d(2 * p, 2 * p, (1, 1), (0, 0, 0, 0), bias=False)
        maps = group_ids(p, groups)
        self.skip = CausalConv2d(p, p, (1, 1), (0, 0, 0, 0), centre=centre_mask(maps, maps, "B"))
        self.residual = (None if last else
                         CausalConv2d(p, p, (1, 1), (0, 0, 0, 0),
                                      centre=centre_mask(maps, maps, "B")))

    def forward(self, vertical: torch.Tensor, horizontal: torch.Tensor):
        height = horizontal.shape[2]
        vertical_pre = self.vertical(vertical)[:, :, :height]  # (N, 2p, H, W), rows < i only
        horizontal_pre = self.horizontal(horizontal) + self.vertical_to_horizontal(vertical_pre)
        gated = gate(horizontal_pre)  # (N, p, H, W)
        if self.residual is None:
            return gate(vertical_pre), None, self.skip(gated)
        # The skip and residual 1x1 convs read the same maps: one conv with both weight sets,
        # one GEMM of twice the width instead of two narrow ones (the weights stay separate).
        weight = torch.cat([self.skip.masked_weight(), self.residual.masked_weight()])
        bias = torch.cat([self.skip.bias, self.residual.bias])
        skip, horizontal_out = F.conv2d(gated, weight, bias).chunk(2, dim=1)
        if not self.first:
            horizontal_out = horizontal_out + horizontal
        return gate(vertical_pre), horizontal_out, skip


class OutputHead(nn.Module):
    """ReLU → 1×1 conv → ReLU → 1×1 conv on the summed skips, both masked B."""

    def __init__(self, config: GatedPixelCNNConfig):
        super().__init__()
        p, hidden, groups = config.channels, config.head_width, config.masking_groups
        out = config.output_channels
        out_groups = group_ids(out, groups)  # softmax RGB: logits of channel c are group c
        self.hidden = CausalConv2d(p, hidden, (1, 1), (0, 0, 0, 0),
                                   centre=centre_mask(group_ids(hidden, groups),
                                                      group_ids(p, groups), "B"))
        self.out = CausalConv2d(hidden, out, (1, 1), (0, 0, 0, 0),
                                centre=centre_mask(out_groups, group_ids(hidden, groups), "B"))

    def forward(self, skips: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(F.relu(skips))))


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN; `model(x)` maps images in [-1, 1] to the output distribution's parameters."""

    def __init__(self, config: GatedPixelCNNConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            GatedLayer(config, first=index == 0, last=index == config.n_layers - 1)
            for index in range(config.n_layers))
        self.head = OutputHead(config)
        # Weights (and masks) channels_last too, or oneDNN reorders them at every call.
        self.to(memory_format=torch.channels_last)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.image_channels, self.config.image_size, self.config.image_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Summed skip connections (N, p, H, W) for images x (N, C, H, W) in [-1, 1]."""
        assert x.shape[1:] == self.image_shape, (x.shape, self.image_shape)
        # channels_last end to end: oneDNN's preferred layout for these small convolutions on CPU
        # (docs/benchmarks.md); every op below keeps it.
        x = x.contiguous(memory_format=torch.channels_last)
        vertical, horizontal, skips = x, x, None
        for layer in self.layers:
            vertical, horizontal, skip = layer(vertical, horizontal)
            skips = skip if skips is None else skips + skip
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """softmax: logits (N, C, 256, H, W); dmol: parameters (N, M·(1+3C), H, W)."""
        params = self.head(self.features(x))
        if self.config.output == "softmax":
            n, _, height, width = params.shape
            return params.view(n, self.config.image_channels, N_VALUES, height, width)
        return params

    def nll(self, images: torch.Tensor) -> torch.Tensor:
        """Exact negative log-likelihood of uint8 images (N, C, H, W): (N,) nats per dim."""
        assert images.dtype == torch.uint8, images.dtype
        params = self(images_to_input(images, self.layers[0].vertical.weight.dtype))
        if self.config.output == "softmax":
            return likelihoods.categorical_nats_per_dim(params, images)
        return likelihoods.dmol_nats_per_dim(likelihoods.uint8_to_dmol_target(images), params)

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_nats_per_dim": self.nll(images)}

    @torch.no_grad()
    def sample(self, n: int, method: str = "cached",
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n uint8 images (n, C, H, W). `method`: "naive" (a full network pass per sub-pixel) or
        "cached" (Ramachandran et al. 2017); both return the same images for the same generator."""
        return pixelcnn_sampling.sample(self, n, method=method, generator=generator)

    def coding_steps(self, n: int, code) -> torch.Tensor:
        """Every sub-pixel's probabilities for a lossless codec, in raster order, through the
        cached sampler's loop (models.pixelcnn_coding): `code(table, c, i, j)` returns the
        values to continue with. Returns the (n, C, H, W) uint8 images."""
        return pixelcnn_coding.coding_steps(self, n, code)


FAMILY = registry.register(registry.Family(
    name="pixelcnn", display_name="Gated PixelCNN", config_cls=GatedPixelCNNConfig, model_cls=GatedPixelCNN, presets=PRESETS,
    image_shape=lambda c: (c.image_channels, c.image_size, c.image_size),
    samplers=(registry.Sampler("naive", {"method": "naive"}),
              registry.Sampler("cached", {"method": "cached"})),
    autoregressive=True, size_field="channels", solve_size=channels_for_param_budget,
    resize=lambda c, size: dataclasses.replace(c, image_size=size),
    capabilities=frozenset({coding.STEPWISE_PROBABILITIES})))
