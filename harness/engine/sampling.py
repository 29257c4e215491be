"""Sampling-speed rows (`sample_images_per_s`, docs/results.md): which samplers of a family are
timed, and how one measurement becomes a row. The run's speed phase (harness.run.speed_phase)
calls these after every cell has finished, with nothing else running."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.engine import throughput
from harness.engine.config import EvalConfig
from models import registry


def samplers(family: registry.Family, methods: tuple[str, ...]) -> list[registry.Sampler]:
    """The samplers to time: an autoregressive family's that `methods` names (naive, cached),
    every sampler of any other family (a VAE's ancestral sampler)."""
    if not family.autoregressive:
        return list(family.samplers)
    return [s for s in family.samplers if s.method in methods]


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
