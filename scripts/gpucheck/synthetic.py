"""Images made on the spot, so the check needs no dataset and no download: smooth random fields
(a low-resolution field upsampled, plus a little noise), the same for a given seed everywhere,
as tensors or as a folder of PNGs for the harness's `image_folder` dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def python_path(*first: Path) -> str:
    """PYTHONPATH with `first` ahead of what this process was given (kept: a caller may need
    it), for the check's own child processes."""
    given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([*map(str, first), *given]))


def images(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """uint8 (n, C, H, W) smooth-ish images, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.rand(n, c, max(1, h // 4), max(1, w // 4), generator=generator)
    field = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear")
    noise = torch.rand(n, c, h, w, generator=generator) * 0.1
    return ((field * 0.9 + noise) * 255).clamp(0, 255).to(torch.uint8)


def png_folder(folder: Path, n: int, shape: tuple[int, int, int], seed: int) -> Path:
    """Write n images as PNGs (greyscale for one channel) into `folder`; returns it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    array = images(n, shape, seed).permute(0, 2, 3, 1).numpy()
    for index, image in enumerate(array):
        picture = Image.fromarray(image[:, :, 0] if shape[0] == 1 else np.ascontiguousarray(image),
                                  mode="L" if shape[0] == 1 else "RGB")
        picture.save(folder / f"{index:05d}.png")
    return folder


def smoke_experiment(out: Path, *, train_images: int = 256, test_images: int = 64,
                     name: str = "gpu_check_smoke", **changes) -> Path:
    """experiments/smoke.yaml with its data replaced by a folder of synthetic 28×28 greyscale
    PNGs (the shape of its Fashion-MNIST models) written under `out`; `changes` replace other
    top-level sections (None removes one). Returns the experiment file's path."""
    folder = png_folder(out / "images", train_images + test_images, (1, 28, 28), seed=0)
    with open(REPO / "experiments" / "smoke.yaml", encoding="utf-8") as handle:
        experiment = yaml.safe_load(handle)
    experiment["name"] = name
    experiment["data"] = {"dataset": "image_folder",
                          "options": {"path": str(folder.resolve()), "validation_size": 0,
                                      "test_size": test_images},
                          "train_images": train_images, "test_images": test_images}
    for key, value in changes.items():  # None removes a section
        if value is None:
            experiment.pop(key, None)
        else:
            experiment[key] = value
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False), encoding="utf-8")
    return path
