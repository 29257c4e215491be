"""Range coding of images with an autoregressive model's exact categoricals (arithmetic coding
with a model of p(x) = Π p(x_i | x_<i): each sub-pixel costs -log2 p(x_i | x_<i) bits, the
message -log2 p(x) plus a few bits; van den Oord et al. 2016, Section 2).

One range-coder stream per batch, the batch's sub-pixels interleaved in coding order (row,
column, channel; the images of the batch at each step), so the coder's end-of-stream overhead
(a few bytes) is paid once per batch, not per image. The model's tables come from
`model.coding_steps` (models.coding.STEPWISE_PROBABILITIES), which the encoder runs on the true
pixels and the decoder on the pixels it decodes: the same loop, batch and thread count, so the
same floats reach the coder (constriction's `Categorical`, which quantizes them to fixed point).
"""

from __future__ import annotations

from typing import Any

import constriction
import numpy as np
import torch

from harness.engine.lossless.segments import corrupt, from_words, to_words
from models import coding

NAME = "range-autoregressive"
VERSION = 1


def _categorical():
    return constriction.stream.model.Categorical(perfect=False)


class ArithmeticCodec:
    """Codec of a family with `models.coding.STEPWISE_PROBABILITIES`."""

    name, version = NAME, VERSION
    capability = coding.STEPWISE_PROBABILITIES
    # The cached loop's per-step overhead is shared by the batch: 32 codes 2x faster than 8.
    default_batch_size = 32

    def __init__(self, batch_size: int):
        assert batch_size >= 1, batch_size
        self.batch_size = batch_size

    def check(self, model) -> None:
        """Every 8-bit sub-pixel value has a probability in the model's tables: nothing to do."""

    def parameters(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def batches(self, n_images: int) -> list[tuple[int, int]]:
        return [(first, min(first + self.batch_size, n_images))
                for first in range(0, n_images, self.batch_size)]

    def encode(self, model, images: torch.Tensor):
        """(segments, layout): one segment per batch, and no layout."""
        segments = []
        for first, stop in self.batches(images.shape[0]):
            batch = images[first:stop]
            encoder, family = constriction.stream.queue.RangeEncoder(), _categorical()

            def code(table: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
                values = batch[:, c, i, j]
                encoder.encode(values.numpy().astype(np.int32), family, table.numpy())
                return values

            model.coding_steps(stop - first, code)
            segments.append(to_words(encoder.get_compressed()))
        return segments, {}

    @staticmethod
    def rate(layout: dict[str, Any], payload_bytes: int) -> dict[str, float]:
        """No initial bits: every payload bit is marginal."""
        return {"initial_bits": 0.0, "marginal_bits": 8.0 * payload_bytes}

    def decode(self, model, segments: list[bytes], n_images: int, source: str,
               layout: dict[str, Any]) -> torch.Tensor:
        batches = self.batches(n_images)
        if len(segments) != len(batches):
            raise corrupt(source, f"{len(segments)} segments for {len(batches)} batches")
        images = []
        for (first, stop), segment in zip(batches, segments):
            decoder, family = constriction.stream.queue.RangeDecoder(from_words(segment)), \
                _categorical()

            def code(table: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
                return torch.from_numpy(decoder.decode(family, table.numpy())).to(torch.uint8)

            images.append(model.coding_steps(stop - first, code))
            if not decoder.maybe_exhausted():
                raise corrupt(source, f"batch {first}-{stop - 1} left coded data unread")
        return torch.cat(images)

