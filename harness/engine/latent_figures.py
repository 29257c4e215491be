"""The data of the hierarchy figures (Child 2021, "Very Deep VAEs", Section 5.2 and Figure 1):
what a hierarchical VAE generates at each resolution of its top-down path.

The paper's claim is that the VAE learns "to first generate global features at low resolution,
then fill in local details in parallel at higher resolutions". These functions make the pictures
that show it, for any model with the `LATENTS` capability (models/registry.py: `encode`,
`decode`, `params_to_images`, `block_resolutions`):

* `generation_by_resolution`: latents up to resolution r drawn, the rest at the prior mean;
* `fixed_top_resampled_below`: posterior latents up to r kept, the rest redrawn;
* `temperature_sweep`: samples at reduced latent temperature;
* `reconstructions`: test images beside decode(encode(image)).

Pure functions: a model and a `torch.Generator` in, uint8 numpy arrays with their axis labels
out; no file I/O and no drawing (the report draws the saved arrays). Pixels are the DMoL mode
(pixel temperature 0: each pixel's most likely mixture component's mean), so pixel noise hides no
structure. The generator draws only latents (the mode's unused uniforms come from a private
generator), so every figure is a function of the generator's state; the generator must live on
the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# Latent temperatures of the sweep: denser near 1, where the paper's reduced-temperature
# samples (t = 0.6 to 0.9) are.
DEFAULT_TEMPERATURES = (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class FigureData:
    """One figure's images and labels.

    images: uint8 (rows, columns, C, H, W), or (rows, columns, redraws, C, H, W) for
    `fixed_top_resampled_below`; rows are samples or input images. column_name and
    column_values label the columns (e.g. "resolution", (1, 7, 14, 28)). originals: uint8
    (rows, C, H, W), the input image of each row, where the figure starts from images.
    """

    images: np.ndarray
    column_name: str
    column_values: tuple
    originals: np.ndarray | None = None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator (figures are deterministic "
                         f"given its seed), got {type(generator).__name__}")


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")


def _images_on(model: nn.Module, images) -> torch.Tensor:
    """uint8 (N, C, H, W) tensor or array -> tensor on the model's device."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images: expected uint8 (N, C, H, W) with N >= 1, got {images.dtype} "
                         f"{tuple(images.shape)}")
    return images.to(_device(model))


def _mode(model: nn.Module, params: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) DMoL mode; the sampler's (ignored) uniforms from a private generator,
    so neither the caller's generator nor the global RNG moves."""
    private = torch.Generator(device=params.device).manual_seed(0)
    return model.params_to_images(params, pixel_temperature=0.0, generator=private)


def _numpy(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.cpu().numpy())


def resolution_prefixes(model: nn.Module) -> list[tuple[int, int]]:
    """(r, k) for every distinct block resolution r, ascending: the blocks at resolution <= r are
    the first k (decoder resolutions never decrease)."""
    resolutions = model.block_resolutions()
    if any(b < a for a, b in zip(resolutions, resolutions[1:])):
        raise ValueError(f"block resolutions decrease: {resolutions}; the figures need the "
                         f"blocks at resolution <= r to come first")
    return [(r, sum(1 for s in resolutions if s <= r)) for r in sorted(set(resolutions))]


@torch.no_grad()
def generation_by_resolution(model: nn.Module, n_samples: int,
                             generator: torch.Generator) -> FigureData:
    """The paper's Figure 1: for each resolution r, the latents of the blocks at resolution <= r
    drawn from the prior (t = 1), every later latent at its prior mean (t = 0).

    One prior draw of all latents is shared by the columns, so column r extends column r-1's
    latents and a row shows one sample gaining detail; the last column is that full sample.
    images (n_samples, n_resolutions, C, H, W), columns labelled by resolution.
    """
    _check_count("n_samples", n_samples)
    _check_generator(generator)
    _, latents = model.decode([], n=n_samples, temperature=1.0, generator=generator,
                              return_latents=True)
    prefixes = resolution_prefixes(model)
    columns = [_mode(model, model.decode(latents[:k], temperature=0.0)) for _, k in prefixes]
    return FigureData(_numpy(torch.stack(columns, dim=1)), "resolution",
                      tuple(r for r, _ in prefixes))


@torch.no_grad()
def fixed_top_resampled_below(model: nn.Module, images, n_redraws: int,
                              generator: torch.Generator) -> FigureData:
    """For each image and resolution r: one posterior draw of the blocks at resolution <= r
    (`encode`, shared by every redraw and every column), every later block drawn from the prior
    (t = 1), `n_redraws` times. Which scale fixes shape and which texture shows as the spread
    across redraws shrinking with r; at the top resolution nothing is left to draw (that column
    is decoded once per image).

    images: uint8 (N, C, H, W). Returns images (N, n_resolutions, n_redraws, C, H, W), columns
    labelled by resolution, and the inputs as `originals`.
    """
    _check_count("n_redraws", n_redraws)
    _check_generator(generator)
    images = _images_on(model, images)
    n = len(images)
    latents = model.encode(images, generator=generator)
    columns = []
    for _, k in resolution_prefixes(model):
        if k == len(latents):
            decoded = _mode(model, model.decode(latents))
            columns.append(decoded.unsqueeze(1).expand(-1, n_redraws, -1, -1, -1))
            continue
        given = [z.repeat_interleave(n_redraws, dim=0) for z in latents[:k]]  # image-major
        params = model.decode(given, n=n * n_redraws, temperature=1.0, generator=generator)
        columns.append(_mode(model, params).reshape(n, n_redraws, *images.shape[1:]))
    return FigureData(_numpy(torch.stack(columns, dim=1)), "resolution",
                      tuple(r for r, _ in resolution_prefixes(model)), _numpy(images))


@torch.no_grad()
def temperature_sweep(model: nn.Module, temperatures: Sequence[float], n_samples: int,
                      generator: torch.Generator) -> FigureData:
    """Samples with every latent at temperature t (prior std × t), for each t.

    Every column restarts the generator from its state at the call, so all temperatures share
    the same ε and row i is one draw seen at each temperature; the generator ends where the last
    column left it. images (n_samples, n_temperatures, C, H, W), columns labelled by temperature.
    """
    _check_count("n_samples", n_samples)
    _check_generator(generator)
    temperatures = tuple(float(t) for t in temperatures)
    if not temperatures or not all(math.isfinite(t) and t >= 0 for t in temperatures):
        raise ValueError(f"temperatures: expected one or more finite values >= 0, got "
                         f"{temperatures}")
    start = generator.get_state()
    columns = []
    for t in temperatures:
        generator.set_state(start)
        columns.append(_mode(model, model.decode([], n=n_samples, temperature=t,
                                                 generator=generator)))
    return FigureData(_numpy(torch.stack(columns, dim=1)), "temperature", temperatures)


@torch.no_grad()
def reconstructions(model: nn.Module, images, generator: torch.Generator) -> FigureData:
    """Each image beside its reconstruction: decode(encode(image)), one posterior draw of every
    latent. images (N, 2, C, H, W), columns "input" and "reconstruction"."""
    _check_generator(generator)
    images = _images_on(model, images)
    decoded = _mode(model, model.decode(model.encode(images, generator=generator)))
    return FigureData(_numpy(torch.stack([images, decoded], dim=1)), "image",
                      ("input", "reconstruction"), _numpy(images))


def hierarchy_figures(model: nn.Module, test_images, seed: int, *, n_samples: int = 8,
                      n_images: int = 4, n_redraws: int = 4,
                      temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                      n_reconstructions: int = 8) -> dict[str, FigureData]:
    """All four figures of one model, each from its own generator seeded with `seed` (so one
    figure's size does not change another's draws), from the first test images."""
    def generator():
        return torch.Generator(device=_device(model)).manual_seed(seed)

    return {
        "generation_by_resolution": generation_by_resolution(model, n_samples, generator()),
        "fixed_top_resampled_below": fixed_top_resampled_below(
            model, test_images[:n_images], n_redraws, generator()),
        "temperature_sweep": temperature_sweep(model, temperatures, n_samples, generator()),
        "reconstructions": reconstructions(model, test_images[:n_reconstructions],
                                           generator()),
    }
