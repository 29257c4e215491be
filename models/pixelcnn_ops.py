"""Elementwise pieces the Gated PixelCNN (models.pixelcnn) and its samplers
(models.pixelcnn_sampling) share: the value count, the gate and the input scaling."""

from __future__ import annotations

import torch

N_VALUES = 256  # 8-bit sub-pixels: 256 classes per softmax


def gate(pre: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """tanh(f) ⊙ σ(g) over the two halves of `pre` along `dim` (Section 2.1, equation 2)."""
    f, g = pre.chunk(2, dim=dim)
    return torch.tanh(f) * torch.sigmoid(g)


def images_to_input(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 values → floats in [-1, 1] (x / 127.5 - 1), the network input and DMOL target."""
    return images.to(dtype) / 127.5 - 1.0
