"""The Gated PixelCNN's coding steps: its exact categorical of every sub-pixel, in raster order,
computed by the cached sampler's loop (models.pixelcnn_sampling.run_cached) for a lossless codec
(arithmetic coding with the model: van den Oord et al. 2016, Section 2: the model is a
factorisation p(x) = Π p(x_i | x_<i), so coding each sub-pixel with its conditional costs
-log2 p(x) bits in all).

The encoder and the decoder both run this loop with the same batch: the encoder feeds the true
pixels (teacher forcing), the decoder the pixels it has decoded, which are the same values, so
every table is computed by the same operations on the same inputs. A single full network pass
would give logits that differ from the cached ones in the last bits (see pixelcnn_sampling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models import coding, pixelcnn_sampling

# code(table (n, 256) float64, c, i, j) -> (n,) uint8 values of sub-pixel (c, i, j)
Code = Callable[[torch.Tensor, int, int, int], torch.Tensor]


class _Steps:
    """The `draw` of `run_cached`: turns the model's output at one position into tables."""

    def __init__(self, channels: int, code: Code):
        self.channels, self.code = channels, code

    def subpixel(self, logits: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
        return self.code(coding.categorical_table(logits), c, i, j)

    def pixel(self, params: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """DMoL output: the channels of pixel (i, j) one after the other, each given the ones
        before it (models.coding.dmol_table)."""
        n = params.shape[0]
        values = torch.zeros((n, self.channels, 1, 1), dtype=torch.uint8, device=params.device)
        grid = params[:, :, None, None]  # (n, M(1+3C), 1, 1)
        for c in range(self.channels):
            table = coding.dmol_table(grid, values[:, :c], c, self.channels)[:, 0, 0]
            values[:, c, 0, 0] = self.code(table, c, i, j)
        return values[:, :, 0, 0]


@torch.no_grad()
def coding_steps(model, n: int, code: Code) -> torch.Tensor:
    """Run the cached loop for n images, calling `code` once per sub-pixel in raster order
    (row, column, then channel); returns the (n, C, H, W) uint8 values it chose."""
    return pixelcnn_sampling.run_cached(model, n, _Steps(model.image_shape[0], code))
