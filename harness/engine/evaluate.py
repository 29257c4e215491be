"""Test-set evaluation: the shared passes, then every study the cell's family supports.

For every weights name ("raw" = final weights, "ema" = bias-corrected EMA weights) one
likelihood pass over EVERY test image (the last partial batch included; the reference's
`drop_last` loses some) gives the per-image arrays that the weights-scoped studies read
(bits/dim ± CI, the VAE terms, KL per layer, active units from the same pass, the IW bound);
then one sample set per cell (saved as `samples.npy`, drawn with the EMA weights when
evaluated) feeds the cell-scoped studies (costs, the sample grid, ...). What runs follows the
family's declared capabilities (models.registry) and the studies' declarations
(harness.engine.studies); each study's outcome and wall time go to `studies.json`. Sampling
*speed* is not measured here but in the run's speed phase (harness.engine.sampling), which times
alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import atomic
from harness.engine import distributed, studies, throughput
from harness.engine.artifacts import save_npy
from harness.engine.config import EvalConfig
from harness.engine.eval_progress import PhaseProgress
from harness.engine.passes import LatentMoments, as_image_set, likelihood_pass
from harness.engine.sampling import samplers
from harness.engine.studies import POSTERIOR_MEANS, SAMPLES, Study, StudyContext, StudySkipped
from harness.errors import UserError
from models import registry

STUDIES_FILE = "studies.json"
SAMPLES_FILE = "samples.npy"
SAMPLE_CHUNK = 256  # images per sample call when drawing the sample set


def chosen_studies(family: registry.Family, config: EvalConfig
                   ) -> tuple[list[Study], dict[str, str]]:
    """The studies that run for `family` under `config`, in order, and {name: why not} for
    the others."""
    running, skipped = [], {}
    for study in studies.registered():
        reason = study.skip_reason(family, config)
        if reason is None and SAMPLES in study.reads \
                and not samplers(family, config.sample_methods):
            reason = "no sampler chosen (eval.sample_methods)"
        if reason is None:
            running.append(study)
        else:
            skipped[study.name] = reason
    return running, skipped


def sample_set_size(running: list[Study], config: EvalConfig, n_test: int) -> int:
    return max([s.n_samples(config, n_test) for s in running if SAMPLES in s.reads] or [0])


class _SampleSet:
    """The cell's sample set, drawn on first use with the family's fastest chosen sampler (the
    cached one of an autoregressive model) from a generator seeded with eval.noise_seed, and
    saved as `samples.npy` (uint8 (n, C, H, W))."""

    def __init__(self, model, family, config: EvalConfig, n: int, out_dir: Path, label: str,
                 show_progress: bool = True):
        self.model, self.family, self.config, self.n = model, family, config, n
        self.out_dir, self.label, self.show_progress = out_dir, label, show_progress
        self.images: np.ndarray | None = None

    def __call__(self) -> np.ndarray:
        if self.images is None:
            chosen = samplers(self.family, self.config.sample_methods)
            sampler = next((s for s in chosen if s.method == "cached"), chosen[0])
            device = throughput.model_device(self.model)
            generator = torch.Generator(device=device).manual_seed(self.config.noise_seed)
            parts = []
            with PhaseProgress(self.label, f"sample set ({sampler.method} sampler)", self.n,
                               every_s=15.0, enabled=self.show_progress) as progress:
                for first in range(0, self.n, SAMPLE_CHUNK):
                    count = min(SAMPLE_CHUNK, self.n - first)
                    samples = self.model.sample(count, generator=generator, **sampler.kwargs)
                    assert samples.dtype == torch.uint8, samples.dtype
                    parts.append(samples.cpu().numpy())
                    progress.update(count)
            self.images = np.concatenate(parts)
            save_npy(self.images, self.out_dir / SAMPLES_FILE)
        return self.images


def _run_study(study: Study, context: StudyContext, label: str,
               record: dict[str, Any]) -> list[dict[str, Any]]:
    start = time.perf_counter()
    key = study.name if context.weights is None else f"{study.name}[{context.weights}]"
    try:
        rows = study.run(context)
    except StudySkipped as skip:
        record[key] = {"status": "skipped", "reason": str(skip)}
        if context.show_progress:
            print(f"{label + ': ' if label else ''}{key} skipped: {skip}", file=sys.stderr, flush=True)
        return []
    wall_s = time.perf_counter() - start
    record[key] = {"status": "done", "wall_s": wall_s, "rows": len(rows)}
    if wall_s >= 2.0 and context.show_progress:
        print(f"{label + ': ' if label else ''}{key}: {wall_s:.1f} s", file=sys.stderr,
              flush=True)
    return rows


def _relabelled(rows: list[dict[str, Any]], source: str, name: str,
                out_dir: Path) -> list[dict[str, Any]]:
    """The rows and per-image files of weights `source` again under weights `name`."""
    for path in sorted(out_dir.glob(f"per_image_*_{source}.npy")):
        atomic.write_bytes(out_dir / (path.name[:-len(f"{source}.npy")] + f"{name}.npy"),
                           path.read_bytes())
    return [{**row, "weights": name} for row in rows if row.get("weights") == source]


def evaluate(models: dict[str, nn.Module], family: registry.Family, test_images,
             config: EvalConfig, out_dir: Path,
             info: distributed.DistInfo | None = None, train_images=None,
             label: str = "", cache_dir: Path | None = None,
             show_progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate each of `config.weights` (keys of `models`: "raw", "ema", models of `family`) on
    every test image with every study that applies; returns tidy rows (docs/results.md), the
    caller adds experiment, cell, model and dataset. The caller's RNG state is left as it was.
    Names bound to one module (the raw and EMA weights of a zero-step run) are evaluated once
    and reported under each name.

    test_images: uint8 (N, C, H, W) tensor or array, in test-split order (possibly
    memory-mapped; only one batch at a time is read). train_images: the same for the training
    split, for studies that read it. label: the cell's name in progress lines. cache_dir: a
    folder shared by the run's cells (inputs computed once per run, e.g. train-set features).

    Under torchrun (`info`, default: the initialised process group; collective, every rank
    calls it) the likelihood passes are sharded over the ranks (`likelihood_pass`); rank 0 then
    runs the studies and writes every file, and the other ranks return [] at once.
    """
    info = distributed.current() if info is None else info
    test_images = as_image_set(test_images, "test_images")
    missing = [name for name in config.weights if name not in models]
    if missing:
        raise UserError(f"eval.weights names {', '.join(missing)} but the run produced only "
                        f"{', '.join(models) or 'no weights'}; list only those")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    running, skipped = chosen_studies(family, config)
    chosen = {name: models[name] for name in config.weights}
    device = throughput.model_device(next(iter(chosen.values())))
    devices = [device.index or 0] if device.type == "cuda" else []
    n = test_images.shape[0]
    rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        first_name: dict[int, str] = {}  # id(module) -> the first weights name bound to it
        passes: dict[str, tuple[dict[str, np.ndarray], float]] = {}
        moments: dict[str, LatentMoments | None] = {}
        wants_means = any(POSTERIOR_MEANS in s.reads for s in running)
        for name, model in chosen.items():
            model.eval()
            if id(model) in first_name:
                continue
            first_name[id(model)] = name
            batch_size = config.batch_size_on(throughput.model_device(model).type)
            moments[name] = LatentMoments(n if config.active_units_max_images is None else
                                          min(n, config.active_units_max_images)) \
                if wants_means else None
            start = time.perf_counter()
            with PhaseProgress(label, f"likelihood pass ({name} weights)", n,
                               enabled=info.is_main and show_progress) as progress:
                passes[name] = likelihood_pass(model, test_images, batch_size, config.noise_seed,
                                               info, moments[name], progress=progress.update)
            record[f"likelihood_pass[{name}]"] = {"status": "done",
                                                  "wall_s": time.perf_counter() - start}
        if not info.is_main:
            return []
        for name, model in chosen.items():
            same = first_name[id(model)]
            if same != name:
                rows += _relabelled(rows, same, name, out_dir)
                continue
            arrays, images_per_s = passes[name]
            context = StudyContext(model=model, family=family, images=test_images,
                                   config=config, out_dir=out_dir, weights=name,
                                   likelihood=arrays, eval_images_per_s=images_per_s,
                                   moments=moments[name], label=label, cache_dir=cache_dir,
                                   show_progress=show_progress)
            for study in running:
                if study.scope == "weights":
                    rows += _run_study(study, context, label, record)
        sampling_model = chosen.get("ema", next(iter(chosen.values())))
        sample_set = _SampleSet(sampling_model, family, config,
                                sample_set_size(running, config, n), out_dir, label,
                                show_progress)
        context = StudyContext(model=sampling_model, family=family, images=test_images,
                               config=config, out_dir=out_dir, samples=sample_set,
                               train_images=lambda: train_images, label=label,
                               cache_dir=cache_dir, show_progress=show_progress)
        for study in running:
            if study.scope == "cell":
                rows += _run_study(study, context, label, record)
    for name, reason in skipped.items():
        record[name] = {"status": "skipped", "reason": reason}
    atomic.write_json(out_dir / STUDIES_FILE, record)
    return rows
