"""Files an evaluation leaves in a cell folder: image grids as PNG, arrays as .npy, written
atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from harness import atomic


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
