"""A grid of the first `eval.n_grid_samples` images of the cell's sample set: `samples.png`."""

from __future__ import annotations

import torch

from harness.engine.artifacts import image_grid, save_png
from harness.engine.studies.base import SAMPLES, Study, StudyContext, register


def run(context: StudyContext) -> list[dict]:
    samples = context.samples()[:context.config.n_grid_samples]  # (n, C, H, W) uint8
    save_png(image_grid(torch.from_numpy(samples)), context.out_dir / "samples.png")
    return []


STUDY = register(Study(
    name="sample_grid", scope="cell", run=run, reads=frozenset({SAMPLES}),
    writes=("samples.png",), description="a grid of samples",
    enabled=lambda config: config.n_grid_samples > 0,
    n_samples=lambda config, n_test: config.n_grid_samples))
