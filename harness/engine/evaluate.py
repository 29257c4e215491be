"""Test-set evaluation: bits/dim with confidence intervals, VAE terms, IW bound, costs, samples.

For every weights name ("raw" = final weights, "ema" = bias-corrected EMA weights) this computes,
over EVERY test image (the last partial batch included; the reference's `drop_last` loses some):

* `test_bits_per_dim` and `test_bits_per_dim_ci95` (1.96 · sd / √N over images): the negative
  ELBO of a VAE (VDVAE, Section 3: one posterior sample, analytic KL) or the exact NLL of an
  autoregressive model, i.e. the model's `loss_nats_per_dim` in bits;
* every other per-image `*_nats_per_dim` entry of the loss dict in bits (a VAE's
  `distortion_bits_per_dim`, `rate_bits_per_dim`) and every (N, L) `*_nats_per_layer` entry
  (nats per image and layer) per layer in bits per dim (`kl_bits_per_dim` with `layer`), for
  families declaring KL_PER_LAYER;
* `active_units` (Burda et al. 2016, Section 5.2: Cov_x(E_q[z]) > threshold), total and per
  layer, for families declaring ACTIVE_UNITS, from the posterior means of the same pass that
  computes the ELBO (no second pass): block i's μ_q(z_i | x, z_<i) with z_<i the posterior
  samples of that pass, i.e. a one-sample unbiased estimate of E_q[z_i | x] over the upper
  layers, where a mean-path pass (z_<i = μ_q, as the VDVAE's `posterior_means`) would give a
  deterministic but different value; the sample's noise adds to the variance across images;
* `iw_bits_per_dim` with `k` on the first `iw_max_images` images, for families declaring IW_NLL
  (Burda et al. 2016, Eq. 8);

and once per call: `params`, `flops_per_image` and a sample grid `samples.png`. Sampling
speed (`sample_images_per_s` for each of the family's declared samplers, an autoregressive
family's only as `sample_methods` lists them) is not timed here but by `sampling_speed_rows`,
which the runner calls in its speed phase after every cell has finished. What a family can do
comes from its `models.registry.Family`, never from inspecting the model.

Common random numbers: the posterior noise of the batch starting at image i is seeded from
(noise_seed, i), so models evaluated with the same noise seed and batch size see the same noise
per image, and per-image differences between two cells are paired.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import atomic
from harness.contract import ci95
from harness.engine import distributed, throughput
from harness.engine.config import EvalConfig
from harness.errors import UserError
from models import registry
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


def _batch_seed(noise_seed: int, first_image: int) -> int:
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
                torch.manual_seed(_batch_seed(seed, first))
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
                    moments: LatentMoments | None = None
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
        torch.manual_seed(_batch_seed(noise_seed, first))
        if moments is not None and moments.wants(first):
            out = model.loss(batch, posterior_means=True)
            moments.add(first, out.pop("posterior_means"))
        else:
            out = model.loss(batch)
        mine[first] = {key: value.detach().double().cpu().numpy() for key, value in out.items()
                       if isinstance(value, torch.Tensor) and value.dim() in (1, 2)
                       and value.shape[0] == batch.shape[0]}
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
            noise_seed: int) -> np.ndarray:
    """Per-image importance-weighted NLL bound (bits/dim, float64) with k samples, for a family
    with the IW_NLL capability: `chunk_size` of the k samples per decoder pass, and
    batch_size // chunk_size images per call, so that one decoder pass holds about `batch_size`
    images."""
    device = throughput.model_device(model)
    per_call = max(1, batch_size // chunk_size)
    values = np.empty(images.shape[0], dtype=np.float64)
    for first in range(0, images.shape[0], per_call):
        batch = images[first:first + per_call].to(device)
        torch.manual_seed(_batch_seed(noise_seed + 1, first))
        values[first:first + batch.shape[0]] = model.iw_nll_bits_per_dim(
            batch, k, chunk_size=chunk_size).double().cpu().numpy()
    return values


def samplers(family: registry.Family, methods: tuple[str, ...]) -> list[registry.Sampler]:
    """The samplers to time: an autoregressive family's that `methods` names (naive, cached),
    every sampler of any other family (a VAE's ancestral sampler)."""
    if not family.autoregressive:
        return list(family.samplers)
    return [s for s in family.samplers if s.method in methods]


def image_grid(images: torch.Tensor, pad: int = 2) -> np.ndarray:
    """uint8 (n, C, H, W) -> one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) image, white gaps."""
    n, c, h, w = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    array = images.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, C)
    for index in range(n):
        top = pad + (index // cols) * (h + pad)
        left = pad + (index % cols) * (w + pad)
        canvas[top:top + h, left:left + w] = array[index]
    return canvas


def save_png(canvas: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic.write_bytes(path, buffer.getvalue())


def save_npy(array: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic.write_bytes(path, buffer.getvalue())


def _active_unit_images(config: EvalConfig, n: int) -> int:
    """How many of the first test images the active-unit statistics cover."""
    return n if config.active_units_max_images is None else min(n, config.active_units_max_images)


def _weights_rows(name: str, model: nn.Module, family: registry.Family, images,
                  config: EvalConfig, out_dir: Path,
                  likelihoods: tuple[dict[str, np.ndarray], float],
                  moments: LatentMoments | None) -> list[dict[str, Any]]:
    batch_size = config.batch_size_on(throughput.model_device(model).type)
    arrays, images_per_s = dict(likelihoods[0]), likelihoods[1]
    if "loss_nats_per_dim" not in arrays:
        raise UserError(f"model {type(model).__name__}.loss returned no (N,) "
                        f"'loss_nats_per_dim'; it cannot be evaluated")
    base = {"split": "test", "weights": name}
    n, dims = images.shape[0], math.prod(images.shape[1:])
    loss = arrays.pop("loss_nats_per_dim")
    bits = nats_to_bits(loss)
    save_npy(bits, out_dir / f"per_image_test_bits_per_dim_{name}.npy")
    rows = [{"metric": "test_bits_per_dim", "value": float(bits.mean()), "n_images": n, **base},
            {"metric": "test_bits_per_dim_ci95", "value": ci95(bits), "n_images": n, **base},
            {"metric": "eval_images_per_s", "value": images_per_s,
             "batch_size": batch_size, **base}]
    for key, values in sorted(arrays.items()):
        if values.ndim == 1 and np.array_equal(values, loss):
            continue  # the objective under another name (a VAE's elbo_nats_per_dim)
        if values.ndim == 1 and key.endswith("_nats_per_dim"):
            rows.append({"metric": key[:-len("_nats_per_dim")] + "_bits_per_dim",
                         "value": float(nats_to_bits(values).mean()), **base})
        elif values.ndim == 2 and key.endswith("_nats_per_layer") \
                and family.can(registry.KL_PER_LAYER):
            # (N, L) nats per image and layer (VDVAE's kl_nats_per_layer) -> bits per dim.
            metric = key[:-len("_nats_per_layer")] + "_bits_per_dim"
            for layer, value in enumerate(nats_to_bits(values / dims).mean(axis=0)):
                rows.append({"metric": metric, "value": float(value), "layer": layer, **base})
    if moments is not None:  # collected in the likelihood pass (family with ACTIVE_UNITS)
        counts = moments.active_units(config.active_unit_threshold)
        context = {"threshold": config.active_unit_threshold, "n_images": moments.n_images,
                   **base}
        rows.append({"metric": "active_units", "value": sum(a for a, _ in counts),
                     "units": sum(t for _, t in counts), **context})
        for layer, (active, total) in enumerate(counts):
            rows.append({"metric": "active_units", "value": active, "layer": layer,
                         "units": total, **context})
    if config.iw_k > 0 and family.can(registry.IW_NLL):
        n_iw = n if config.iw_max_images is None else min(n, config.iw_max_images)
        subset = images if n_iw == n else images[:n_iw]
        iw = iw_pass(model, subset, config.iw_k, config.iw_chunk_size, batch_size,
                     config.noise_seed)
        save_npy(iw, out_dir / f"per_image_iw_bits_per_dim_{name}.npy")
        context = {"k": config.iw_k, "n_images": n_iw, **base}
        rows += [{"metric": "iw_bits_per_dim", "value": float(iw.mean()), **context},
                 {"metric": "iw_bits_per_dim_ci95", "value": ci95(iw), **context}]
    return rows


def _cost_rows(model: nn.Module, family: registry.Family, images: torch.Tensor,
               config: EvalConfig, out_dir: Path) -> list[dict[str, Any]]:
    device = throughput.model_device(model)
    rows: list[dict[str, Any]] = [{"metric": "params",
                                   "value": registry.count_parameters(model)}]
    if config.flops:
        torch.manual_seed(config.noise_seed)
        rows.append({"metric": "flops_per_image",
                     "value": throughput.flops_per_image(model, images[:1])})
    chosen = samplers(family, config.sample_methods)
    if config.n_grid_samples and chosen:
        # The fastest sampler draws the grid (the cached one of an autoregressive model).
        grid_sampler = next((s for s in chosen if s.method == "cached"), chosen[0])
        generator = torch.Generator(device=device).manual_seed(config.noise_seed)
        samples = model.sample(config.n_grid_samples, generator=generator,
                               **grid_sampler.kwargs)
        assert samples.dtype == torch.uint8 and samples.shape[1:] == images.shape[1:], \
            (samples.dtype, samples.shape)
        save_png(image_grid(samples), out_dir / "samples.png")
    return rows


def speed_row(measurement: throughput.SpeedMeasurement, **context: Any) -> dict[str, Any]:
    """One `sample_images_per_s` row (docs/results.md): the median images/s of the settled
    rounds as the value, their min, max and relative spread, the rounds run, and `context`
    (method, batch_size, image_size, repeats = sample calls per round, temperature)."""
    return {"metric": "sample_images_per_s", "value": measurement.images_per_s,
            "min_images_per_s": measurement.min_images_per_s,
            "max_images_per_s": measurement.max_images_per_s,
            "spread_fraction": measurement.spread_fraction, "rounds": measurement.rounds,
            "settled": measurement.settled, **context}


def sampling_speed_rows(model: nn.Module, family: registry.Family, config: EvalConfig,
                        image_size: int) -> list[dict[str, Any]]:
    """`sample_images_per_s` rows of each sampler of `samplers(family, config.sample_methods)`
    at `config.sample_batch_size`: rounds of `sample_repeats` calls after `sample_warmup` until
    the stopping rule of `config` (throughput.measure_until_settled). The runner calls it in its
    speed phase, after every cell, with nothing else running: timings taken while another
    process trains are not comparable between cells."""
    device = throughput.model_device(model)
    rows = []
    was_training = model.training
    model.eval()
    for sampler in samplers(family, config.sample_methods):
        generator = torch.Generator(device=device).manual_seed(config.noise_seed)
        measurement = throughput.sampling_speed(
            model, config.sample_batch_size, config.sample_repeats, config.sample_warmup,
            window=config.sample_window_rounds, tolerance=config.sample_spread_tolerance,
            max_rounds=config.sample_max_rounds, max_s=config.sample_max_s,
            generator=generator, **sampler.kwargs)
        context: dict[str, Any] = {"method": sampler.method,
                                   "batch_size": config.sample_batch_size,
                                   "image_size": image_size, "repeats": config.sample_repeats}
        if sampler.temperature:
            context["temperature"] = sampler.kwargs["temperature"]
        rows.append(speed_row(measurement, **context))
    model.train(was_training)
    return rows


def _relabelled(rows: list[dict[str, Any]], source: str, name: str,
                out_dir: Path) -> list[dict[str, Any]]:
    """The rows and per-image files of weights `source` again under weights `name`."""
    for kind in ("test", "iw"):
        path = out_dir / f"per_image_{kind}_bits_per_dim_{source}.npy"
        if path.is_file():
            atomic.write_bytes(out_dir / f"per_image_{kind}_bits_per_dim_{name}.npy",
                               path.read_bytes())
    return [{**row, "weights": name} for row in rows if row.get("weights") == source]


def evaluate(models: dict[str, nn.Module], family: registry.Family, test_images,
             config: EvalConfig, out_dir: Path,
             info: distributed.DistInfo | None = None) -> list[dict[str, Any]]:
    """Evaluate each of `config.weights` (keys of `models`: "raw", "ema", models of `family`) on
    every test image; what beyond bits/dim is measured follows the family's declared
    capabilities and samplers (models.registry).

    test_images: uint8 (N, C, H, W) tensor or array, in test-split order (possibly memory-mapped;
    only one batch at a time is read). Writes `out_dir/per_image_test_bits_per_dim_<weights>.npy`
    (float64, test-split order), `per_image_iw_bits_per_dim_<weights>.npy` when the IW bound is
    computed, and `samples.png` (drawn with the EMA weights when present). Returns tidy rows
    (docs/results.md); the caller adds experiment, cell, model and dataset. The caller's RNG state
    is left as it was. Names bound to one module (the raw and EMA weights of a zero-step run)
    are evaluated once and reported under each name.

    Under torchrun (`info`, default: the initialised process group; collective, every rank
    calls it) the likelihood passes are sharded over the ranks (`likelihood_pass`); rank 0 then
    measures the rest and writes every file, and the other ranks return [] at once.
    """
    info = distributed.current() if info is None else info
    test_images = as_image_set(test_images, "test_images")
    missing = [name for name in config.weights if name not in models]
    if missing:
        raise UserError(f"eval.weights names {', '.join(missing)} but the run produced only "
                        f"{', '.join(models) or 'no weights'}; list only those")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = {name: models[name] for name in config.weights}
    device = throughput.model_device(next(iter(chosen.values())))
    devices = [device.index or 0] if device.type == "cuda" else []
    rows: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        first_name: dict[int, str] = {}  # id(module) -> the first weights name bound to it
        passes = {}
        moments: dict[str, LatentMoments | None] = {}
        for name, model in chosen.items():
            model.eval()
            if id(model) not in first_name:
                first_name[id(model)] = name
                batch_size = config.batch_size_on(throughput.model_device(model).type)
                moments[name] = (LatentMoments(_active_unit_images(config, test_images.shape[0]))
                                 if family.can(registry.ACTIVE_UNITS) else None)
                passes[name] = likelihood_pass(model, test_images, batch_size,
                                               config.noise_seed, info, moments[name])
        if not info.is_main:
            return []
        for name, model in chosen.items():
            same = first_name[id(model)]
            if same != name:
                rows += _relabelled(rows, same, name, out_dir)
                continue
            rows += _weights_rows(name, model, family, test_images, config, out_dir,
                                  passes[name], moments[name])
        sampling_model = chosen.get("ema", next(iter(chosen.values())))
        rows += _cost_rows(sampling_model, family, test_images, config, out_dir)
    return rows
