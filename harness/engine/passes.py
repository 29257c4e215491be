"""The passes over test images that evaluation studies share (harness.engine.studies).

* `likelihood_pass`: every per-image entry of `model.loss` over all test images, once per weights;
  bits/dim, the VAE terms, KL per layer, active units and bits per resolution all read it;
* `iw_pass`: the importance-weighted bound (Burda et al. 2016, Eq. 8);
* `sharded_bits_per_dim`: the validation figure during training.

Common random numbers: the posterior noise of the batch starting at image i is seeded from
(noise_seed, i), so models evaluated with the same noise seed and batch size see the same noise
per image, and per-image differences between two cells are paired.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.engine import distributed, throughput
from harness.errors import UserError
from models.likelihoods import nats_to_bits


def as_image_set(images: Any, what: str = "images"):
    """A uint8 (N, C, H, W) image set indexed batch by batch: a tensor, a numpy array (e.g. a
    memmap, wrapped without copying) or any object with `.shape`, `.dtype` uint8 and batch
    indexing that returns tensors (harness.data's LazyImages)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    shape = tuple(getattr(images, "shape", ()))
    if getattr(images, "dtype", None) != torch.uint8 or len(shape) != 4 \
            or not hasattr(images, "__getitem__"):
        raise UserError(f"{what} must be uint8 images (N, C, H, W); got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {shape}")
    return images


def batch_seed(noise_seed: int, first_image: int) -> int:
    return int(np.random.SeedSequence([noise_seed, first_image]).generate_state(1)[0])


@torch.no_grad()
def sharded_bits_per_dim(modules: dict[str, nn.Module], images, batch_size: int,
                         max_images: int | None, seed: int,
                         info: distributed.DistInfo) -> tuple[dict[str, float], int]:
    """Mean bits/dim of each module on the first `max_images` images, split over ranks (the
    validation figure during training; every rank gets the result).

    Runs under a forked RNG with a fixed seed: the noise of stochastic losses (the VAE's posterior
    sample) is the same at every call, and the caller's RNG stream is left untouched.
    """
    n = images.shape[0] if max_images is None else min(max_images, images.shape[0])
    per_rank = math.ceil(n / info.world_size)
    start, stop = info.rank * per_rank, min(n, (info.rank + 1) * per_rank)
    results = {}
    for name, module in modules.items():
        device = throughput.model_device(module)
        was_training = module.training
        module.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            for first in range(start, stop, batch_size):
                torch.manual_seed(batch_seed(seed, first))
                batch = images[first:min(stop, first + batch_size)].to(device)
                loss = module.loss(batch)["loss_nats_per_dim"].double()
                totals[0] += loss.sum()
                totals[1] += loss.numel()
        module.train(was_training)
        distributed.all_reduce_sum(totals, info)
        results[name] = float(nats_to_bits(totals[0] / totals[1]))
    return results, n


class LatentMoments:
    """Float64 sums of the posterior means and of their squares per latent layer and unit, over
    the first `n_images` images of a likelihood pass (the active-unit statistics, accumulated
    where the ELBO is computed). Population variance per unit: E[μ²] - E[μ]²."""

    def __init__(self, n_images: int):
        assert n_images >= 1, n_images
        self.n_images = n_images
        self.sums: list[torch.Tensor] = []      # per layer (zdim, R, R) float64
        self.squares: list[torch.Tensor] = []

    def wants(self, first: int) -> bool:
        """Whether the batch starting at image `first` holds any of the first n_images."""
        return first < self.n_images

    def add(self, first: int, means: list[torch.Tensor]) -> None:
        """Add the batch starting at image `first`: per layer (b, zdim, R, R) posterior means;
        only its images below n_images count."""
        take = min(means[0].shape[0], self.n_images - first) if means else 0
        if take <= 0:
            return
        if not self.sums:
            self.sums = [torch.zeros(m.shape[1:], dtype=torch.float64, device=m.device)
                         for m in means]
            self.squares = [torch.zeros_like(s) for s in self.sums]
        for layer, mean in enumerate(means):
            mean = mean[:take].double()
            self.sums[layer] += mean.sum(0)
            self.squares[layer] += (mean * mean).sum(0)

    def all_reduce(self, info: distributed.DistInfo, device: torch.device) -> None:
        """Sum every rank's share (collective under torchrun: every rank calls it). A rank that
        saw none of the first n_images contributes zeros of the shapes another rank found."""
        if not info.enabled:
            return
        shapes = next((s for s in distributed.all_gather_object(
            [tuple(t.shape) for t in self.sums] or None, info) if s), None)
        if shapes is None:
            return
        if not self.sums:
            self.sums = [torch.zeros(s, dtype=torch.float64, device=device) for s in shapes]
            self.squares = [torch.zeros_like(t) for t in self.sums]
        flat = torch.cat([t.reshape(-1) for t in self.sums + self.squares])
        distributed.all_reduce_sum(flat, info)
        for tensor, piece in zip(self.sums + self.squares,
                                 flat.split([t.numel() for t in self.sums + self.squares])):
            tensor.copy_(piece.view_as(tensor))

    def variances(self) -> list[torch.Tensor]:
        """Per layer (zdim, R, R) float64 population variance of the posterior means."""
        n = self.n_images
        return [square / n - (total / n) ** 2 for total, square in zip(self.sums, self.squares)]

    def active_units(self, threshold: float) -> list[tuple[int, int]]:
        """(active, total) latent units per layer: variance across images > threshold."""
        return [(int((v > threshold).sum()), v.numel()) for v in self.variances()]


def likelihood_pass(model: nn.Module, images, batch_size: int, noise_seed: int,
                    info: distributed.DistInfo | None = None,
                    moments: LatentMoments | None = None,
                    progress: Callable[[int], None] | None = None
                    ) -> tuple[dict[str, np.ndarray], float]:
    """Per-image float64 arrays of every (N,) and (N, L) entry of `model.loss` over all images,
    and the pass's images/s (synchronised, gathering included). Batches are seeded from
    (noise_seed, first index).

    `moments` (a family with ACTIVE_UNITS): the batches holding any of its first n_images are
    run as `model.loss(batch, posterior_means=True)` and their posterior means, those at this
    pass's sampled path, accumulated into it (summed over ranks at the end); the other entries
    are the same as without it.

    Under torchrun (`info` with several ranks; collective: every rank calls it) the batches are
    dealt round-robin to the ranks and the per-image values gathered, so every rank returns the
    arrays one process computes: the same batches, the same seeds, the same values."""
    info = info or distributed.DistInfo()
    device = throughput.model_device(model)
    n = images.shape[0]
    throughput.synchronize(device)
    start = time.perf_counter()
    mine: dict[int, dict[str, np.ndarray]] = {}  # first index -> key -> (b, ...) values
    for first in list(range(0, n, batch_size))[info.rank::info.world_size]:
        batch = images[first:first + batch_size].to(device)  # (b, C, H, W) uint8
        torch.manual_seed(batch_seed(noise_seed, first))
        if moments is not None and moments.wants(first):
            out = model.loss(batch, posterior_means=True)
            moments.add(first, out.pop("posterior_means"))
        else:
            out = model.loss(batch)
        mine[first] = {key: value.detach().double().cpu().numpy() for key, value in out.items()
                       if isinstance(value, torch.Tensor) and value.dim() in (1, 2)
                       and value.shape[0] == batch.shape[0]}
        if progress is not None:
            progress(batch.shape[0] * info.world_size)
    if moments is not None:
        moments.all_reduce(info, device)
    throughput.synchronize(device)
    shares = distributed.all_gather_object(mine, info) if info.enabled else [mine]
    arrays: dict[str, np.ndarray] = {}
    for share in shares:
        for first, values in share.items():
            for key, value in values.items():
                if key not in arrays:
                    arrays[key] = np.empty((n,) + value.shape[1:], dtype=np.float64)
                arrays[key][first:first + value.shape[0]] = value
    return arrays, n / max(time.perf_counter() - start, 1e-9)


def iw_pass(model: nn.Module, images, k: int, chunk_size: int, batch_size: int,
            noise_seed: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Per-image importance-weighted NLL bound (bits/dim, float64) with k samples, for a family
    with the IW_NLL capability: `chunk_size` of the k samples per decoder pass, and
    batch_size // chunk_size images per call, so that one decoder pass holds about `batch_size`
    images."""
    device = throughput.model_device(model)
    per_call = max(1, batch_size // chunk_size)
    values = np.empty(images.shape[0], dtype=np.float64)
    for first in range(0, images.shape[0], per_call):
        batch = images[first:first + per_call].to(device)
        torch.manual_seed(batch_seed(noise_seed + 1, first))
        values[first:first + batch.shape[0]] = model.iw_nll_bits_per_dim(
            batch, k, chunk_size=chunk_size).double().cpu().numpy()
        if progress is not None:
            progress(batch.shape[0])
    return values
