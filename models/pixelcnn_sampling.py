"""Sampling a Gated PixelCNN: naive, and cached (Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models").

Both samplers visit positions in the same order and turn a distribution into values through the
same `_Draw` (softmax: inverse CDF with one uniform per sub-pixel, all pre-drawn from the
generator; dmol: `likelihoods.dmol_sample` once per pixel), so with the same generator seed they
return identical images, up to floating-point ties: the two paths add the same terms in different
orders, so their logits differ in the last bits (tests compare them in float64).

* naive: one full pass of both stacks over the whole canvas per sub-pixel (H·W·C passes); the
  1×1 output head is then evaluated only at the position being sampled, since its value
  anywhere else is thrown away. Evaluating it everywhere would make naive slower still.
* cached: the vertical stack of row i needs only image rows < i, so it is computed once per row
  for the full width from cached rows of every layer; the horizontal stack keeps, per layer,
  the current row, and a step computes one new column of every layer and the head at that
  column. For RGB each sub-pixel step recomputes only the current pixel's column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models import likelihoods
from models.pixelcnn_ops import N_VALUES, gate, images_to_input


def sample(model, n: int, method: str = "cached",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """n uint8 images (n, C, H, W) from `model` (a GatedPixelCNN)."""
    samplers = {"naive": sample_naive, "cached": sample_cached}
    if method not in samplers:
        raise ValueError(f"unknown sampling method '{method}'. Valid: {', '.join(samplers)}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of samples n={n!r} must be a positive integer")
    with torch.no_grad():
        return samplers[method](model, n, generator)


class _Draw:
    """Turns the distribution at one position into values, consuming randomness identically
    whichever sampler calls it (the samplers visit positions in the same order).

    softmax: one uniform per sub-pixel, all drawn from the generator up front, (n, C, H, W)
    float64, and an inverse-CDF draw. dmol: `likelihoods.dmol_sample` on the (n, M(1+3C))
    parameters of one pixel with the generator, called once per pixel in raster order, so the
    generator's stream is consumed the same way by both samplers.
    """

    def __init__(self, model, n: int, generator: torch.Generator | None):
        channels, height, width = model.image_shape
        self.channels = channels
        self.generator = generator
        self.device = _param(model).device
        self.dmol = model.config.output == "dmol"
        self.uniforms = None
        if not self.dmol:
            source = generator.device if generator is not None else self.device
            self.uniforms = torch.rand((n, channels, height, width), generator=generator,
                                       dtype=torch.float64, device=source).to(self.device)

    def subpixel(self, logits: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
        """(n,) uint8 value of sub-pixel (c, i, j) from its (n, 256) logits."""
        return categorical_from_uniform(logits, self.uniforms[:, c, i, j]).to(torch.uint8)

    def pixel(self, params: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """(n, C) uint8 values of pixel (i, j) from its (n, M(1+3C)) DMOL parameters."""
        grid = likelihoods.dmol_sample(params[:, :, None, None], self.channels,
                                       generator=self.generator)  # (n, C, 1, 1) in [-1, 1]
        return likelihoods.dmol_grid_to_uint8(grid[:, :, 0, 0])


def categorical_from_uniform(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from softmax(logits) (n, K) with one uniform in [0, 1) per row: (n,) long.
    Computed in float64 so that near-identical logits give the same value."""
    cdf = torch.softmax(logits.double(), dim=-1).cumsum_(dim=-1)
    # Scale u by the total so rounding in the cumulative sum never leaves mass unreachable.
    index = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)
    return index.squeeze(1).clamp_(max=logits.shape[-1] - 1)


def _param(model) -> torch.Tensor:
    return model.layers[0].vertical.weight


class _Head:
    """The output head as matrices, evaluated at one position (n, p) → (n, out)."""

    def __init__(self, model):
        head = model.head
        self.hidden_t = head.hidden.masked_weight()[:, :, 0, 0].t().contiguous()  # (p, hidden)
        self.hidden_b = head.hidden.bias
        self.out_t = head.out.masked_weight()[:, :, 0, 0].t().contiguous()  # (hidden, out)
        self.out_b = head.out.bias
        # Per-channel blocks of the softmax logits, so a sub-pixel step computes 256 outputs.
        self.out_t_blocks = [block.contiguous() for block in self.out_t.split(N_VALUES, dim=1)]
        self.out_b_blocks = list(self.out_b.split(N_VALUES))

    def hidden_of(self, skips: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.hidden_b, skips.relu(), self.hidden_t).relu_()

    def logits(self, skips: torch.Tensor, channel: int) -> torch.Tensor:
        """(n, 256) logits of sub-pixel `channel` from the summed skips (n, p) at one position."""
        return torch.addmm(self.out_b_blocks[channel], self.hidden_of(skips),
                           self.out_t_blocks[channel])

    def params(self, skips: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.out_b, self.hidden_of(skips), self.out_t)


def sample_naive(model, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A full pass of both stacks per sampled value: H·W·C passes (H·W for DMOL)."""
    channels, height, width = model.image_shape
    param = _param(model)
    draw, head = _Draw(model, n, generator), _Head(model)
    canvas = torch.zeros((n, channels, height, width), dtype=param.dtype, device=param.device)
    images = torch.zeros((n, channels, height, width), dtype=torch.uint8, device=param.device)
    for i in range(height):
        for j in range(width):
            if draw.dmol:
                skips = model.features(canvas)[:, :, i, j]  # (n, p)
                images[:, :, i, j] = draw.pixel(head.params(skips), i, j)
                canvas[:, :, i, j] = images_to_input(images[:, :, i, j], param.dtype)
                continue
            for c in range(channels):
                skips = model.features(canvas)[:, :, i, j]  # (n, p)
                images[:, c, i, j] = draw.subpixel(head.logits(skips, c), c, i, j)
                canvas[:, c, i, j] = images_to_input(images[:, c, i, j], param.dtype)
    return images


class _CachedLayer:
    """One gated layer's weights as matrices plus its caches for the cached sampler.

    vertical_in: the layer's vertical-stack input rows, zero padded: (n, c_in, H + top, W + 2·half)
    horizontal_in: the current row of its horizontal-stack input, zero padded on the left and
    stored channel-last, (n, W + half, c_in), so a 1×(half+1) window is a view (n, (half+1)·c_in).
    """

    def __init__(self, layer, n: int, height: int, width: int, device, dtype):
        vertical = layer.vertical
        c_in = vertical.in_channels
        self.p2 = vertical.out_channels  # 2p
        self.half = vertical.kernel_size[1] // 2
        self.top = vertical.causal_padding[2]
        self.first, self.last = layer.first, layer.residual is None
        self.vertical_weight, self.vertical_bias = vertical.masked_weight(), vertical.bias
        # Horizontal window weights ordered (tap, channel) to match the channel-last row cache.
        horizontal = layer.horizontal.masked_weight()[:, :, 0, :]  # (2p, c_in, half+1)
        self.horizontal_t = horizontal.permute(2, 1, 0).reshape(-1, self.p2).contiguous()
        self.horizontal_b = layer.horizontal.bias
        self.link_t = layer.vertical_to_horizontal.masked_weight()[:, :, 0, 0].t().contiguous()
        out_weights = [layer.skip.masked_weight()[:, :, 0, 0]]
        out_biases = [layer.skip.bias]
        if not self.last:
            out_weights.append(layer.residual.masked_weight()[:, :, 0, 0])
            out_biases.append(layer.residual.bias)
        self.p = self.p2 // 2
        self.skip_residual_t = torch.cat(out_weights).t().contiguous()  # (p, p or 2p)
        self.skip_residual_b = torch.cat(out_biases)
        self.vertical_in = torch.zeros((n, c_in, height + self.top, width + 2 * self.half),
                                       dtype=dtype, device=device)
        self.horizontal_in = torch.zeros((n, width + self.half, c_in), dtype=dtype, device=device)
        self.link = None  # (W, n, 2p): vertical → horizontal term plus bias, for the current row

    def vertical_row(self, i: int) -> torch.Tensor:
        """Vertical-stack pre-activation of row i, (n, 2p, W), from the cached rows above."""
        rows = self.vertical_in[:, :, i:i + self.half + 1]  # input rows i-top .. i-top+half
        return F.conv2d(rows, self.vertical_weight, self.vertical_bias)[:, :, 0]

    def start_row(self, vertical_pre: torch.Tensor) -> None:
        n, p2, width = vertical_pre.shape
        flat = vertical_pre.permute(2, 0, 1).reshape(width * n, p2)
        self.link = torch.addmm(self.horizontal_b, flat, self.link_t).view(width, n, p2)
        self.horizontal_in[:, self.half:].zero_()

    def step(self, j: int):
        """Column j of this layer: (skip (n, p), horizontal output (n, p) or None)."""
        window = self.horizontal_in[:, j:j + self.half + 1].reshape(self.horizontal_in.shape[0], -1)
        pre = torch.addmm(self.link[j], window, self.horizontal_t)  # (n, 2p)
        gated = gate(pre)
        out = torch.addmm(self.skip_residual_b, gated, self.skip_residual_t)
        if self.last:
            return out, None
        residual = out[:, self.p:]
        if not self.first:
            residual = residual + self.horizontal_in[:, j + self.half]
        return out[:, :self.p], residual


def sample_cached(model, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cached sampling: per row one full-width vertical-stack row per layer, per step one column
    of the horizontal stack per layer and the head at that column."""
    return run_cached(model, n, _Draw(model, n, generator))


def run_cached(model, n: int, draw) -> torch.Tensor:
    """The cached sampler's loop with the values chosen by `draw`: `draw.subpixel(logits (n,
    256), c, i, j)` -> (n,) uint8 (softmax) or `draw.pixel(params (n, M(1+3C)), i, j)` -> (n, C)
    uint8 (dmol), in raster order. Sampling draws them; the lossless codec (models.coding)
    codes them, feeding the true or the decoded pixels through this same loop."""
    channels, height, width = model.image_shape
    param = _param(model)
    head = _Head(model)
    dmol = model.config.output == "dmol"
    layers = [_CachedLayer(layer, n, height, width, param.device, param.dtype)
              for layer in model.layers]
    first = layers[0]
    images = torch.zeros((n, channels, height, width), dtype=torch.uint8, device=param.device)

    def horizontal_column(j: int) -> torch.Tensor:
        skips = None
        for index, layer in enumerate(layers):
            skip, horizontal = layer.step(j)
            skips = skip if skips is None else skips + skip
            if horizontal is not None:
                following = layers[index + 1]
                following.horizontal_in[:, j + following.half] = horizontal
        return skips  # (n, p)

    for i in range(height):
        # Vertical stack of row i for every layer: depends only on image rows < i.
        for index, layer in enumerate(layers):
            vertical_pre = layer.vertical_row(i)  # (n, 2p, W)
            layer.start_row(vertical_pre)
            if index + 1 < len(layers):
                following = layers[index + 1]
                following.vertical_in[:, :, i + following.top, following.half:
                                      following.half + width] = gate(vertical_pre)
        for j in range(width):
            pixel = first.horizontal_in[:, j + first.half]  # (n, C) view of the current pixel
            if dmol:
                images[:, :, i, j] = draw.pixel(head.params(horizontal_column(j)), i, j)
                pixel.copy_(images_to_input(images[:, :, i, j], param.dtype))
                continue
            for c in range(channels):
                images[:, c, i, j] = draw.subpixel(head.logits(horizontal_column(j), c), c, i, j)
                pixel[:, c] = images_to_input(images[:, c, i, j], param.dtype)
        # Row i is complete: it becomes input to the first layer's vertical stack.
        first.vertical_in[:, :, i + first.top, first.half:first.half + width] = \
            first.horizontal_in[:, first.half:].transpose(1, 2)
    return images
