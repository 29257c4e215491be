"""The hierarchy figures' data (Child 2021, Section 5.2 and Figure 1): generation by
resolution, fixed top with everything below redrawn, a latent-temperature sweep and
reconstructions, for a family whose models take latents in and out (`latents`).

Writes `hierarchy/<figure>.npy` (uint8 image arrays, harness.engine.latent_figures says their
axes) and `hierarchy/figures.json` (each figure's column labels and array file) in the cell
folder; the report draws them. No metric rows."""

from __future__ import annotations

import json

import numpy as np

from harness import atomic
from harness.engine.artifacts import save_npy
from harness.engine.latent_figures import hierarchy_figures
from harness.engine.studies.base import Study, StudyContext, register
from models import registry

FOLDER = "hierarchy"


def run(context: StudyContext) -> list[dict]:
    config = context.config
    n_test = context.images.shape[0]
    n_images = min(config.hierarchy_images, n_test)
    first = context.images[:max(n_images, min(8, n_test))]  # (n, C, H, W) uint8
    figures = hierarchy_figures(context.model, first, config.noise_seed,
                                n_samples=config.hierarchy_samples, n_images=n_images,
                                n_reconstructions=min(8, n_test))
    folder = context.out_dir / FOLDER
    index = {}
    for name, data in figures.items():
        save_npy(np.ascontiguousarray(data.images), folder / f"{name}.npy")
        entry = {"images": f"{name}.npy", "shape": list(data.images.shape),
                 "column_name": data.column_name,
                 "column_values": [v if isinstance(v, str) else
                                   float(v) if isinstance(v, float) else int(v)
                                   for v in data.column_values]}
        if data.originals is not None:
            save_npy(np.ascontiguousarray(data.originals), folder / f"{name}_originals.npy")
            entry["originals"] = f"{name}_originals.npy"
        index[name] = entry
    atomic.write_text(folder / "figures.json", json.dumps(
        {"weights": "ema" if "ema" in config.weights else config.weights[0],
         "pixels": "DMoL mode (pixel temperature 0)", "figures": index}, indent=1))
    return []


STUDY = register(Study(
    name="hierarchy_figures", scope="cell", run=run, needs=frozenset({registry.LATENTS}),
    writes=("hierarchy/*.npy", "hierarchy/figures.json"),
    description="what each resolution of the top-down path generates (the paper's Figure 1)",
    enabled=lambda config: config.hierarchy_samples > 0,
    # About 200 decoder passes of one image: 8 samples × 4 resolutions, 4 images × 4
    # resolutions × 4 redraws, 8 temperatures × 8 samples, 8 reconstructions.
    estimate_s=lambda cost, config: 200 * cost.forward_s))
