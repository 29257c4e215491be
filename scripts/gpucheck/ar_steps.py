"""An autoregressive sampler timed over a bounded number of sub-pixel steps, then scaled.

Naive PixelCNN sampling at 64×64×3 is 12,288 full network passes per call (about 36 PFLOP at
batch 16): too long to time whole inside the check's budget. Both samplers draw every sub-pixel
through `models.pixelcnn_sampling._Draw` (`subpixel` for a softmax head, `pixel` for DMOL:
C sub-pixels at once), so counting those calls and stopping the sampler after k of them times
the real sampler code, unchanged. `timed_rate` times k and 2k steps: the difference is the cost
of k steps, the rest the call's fixed set-up, and a full call is set-up + all steps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from models import pixelcnn_sampling


class StepLimit(Exception):
    """Raised inside the sampler once the limit of sub-pixels has been drawn."""


@contextlib.contextmanager
def stop_after(subpixels: int) -> Iterator[list[int]]:
    """Within the block, a PixelCNN sampler raises StepLimit once `subpixels` sub-pixels are
    drawn; yields a one-item list holding the count drawn so far."""
    assert subpixels >= 1, subpixels
    draw = pixelcnn_sampling._Draw
    original_subpixel, original_pixel = draw.subpixel, draw.pixel
    count = [0]

    def counted(n: int) -> None:
        count[0] += n
        if count[0] >= subpixels:
            raise StepLimit(count[0])

    def subpixel(self, logits, c, i, j):
        value = original_subpixel(self, logits, c, i, j)
        counted(1)
        return value

    def pixel(self, params):
        value = original_pixel(self, params)
        counted(self.channels)
        return value

    draw.subpixel, draw.pixel = subpixel, pixel
    try:
        yield count
    finally:
        draw.subpixel, draw.pixel = original_subpixel, original_pixel


def bounded_call_s(sample: Callable[[], object], subpixels: int,
                   synchronize: Callable[[], None]) -> tuple[float, int]:
    """Seconds from the call until `subpixels` sub-pixels were drawn, and how many were (the
    whole image when it has fewer)."""
    synchronize()
    start = time.perf_counter()
    with stop_after(subpixels) as count:
        try:
            sample()
        except StepLimit:
            pass
        synchronize()
    return time.perf_counter() - start, count[0]


@dataclass(frozen=True)
class ScaledRate:
    images_per_s: float
    call_s: float               # a whole sampling call, scaled
    step_s: float               # one sub-pixel step
    setup_s: float              # the call's cost before and outside the steps
    timed_steps: tuple[int, int]
    total_steps: int


def timed_rate(sample: Callable[[], object], batch: int, steps: int, total_steps: int,
               synchronize: Callable[[], None], warmup_steps: int = 1) -> ScaledRate:
    """Time `steps` and `2 * steps` sub-pixel steps of one sampling call (after a warm-up call
    of `warmup_steps`), and scale to the `total_steps` of a whole call of `batch` images."""
    steps = min(steps, max(1, total_steps // 2))
    bounded_call_s(sample, max(1, warmup_steps), synchronize)
    short_s, short = bounded_call_s(sample, steps, synchronize)
    long_s, long = bounded_call_s(sample, 2 * steps, synchronize)
    step_s = max(long_s - short_s, 0.0) / max(1, long - short)
    setup_s = max(short_s - short * step_s, 0.0)
    call_s = setup_s + total_steps * step_s
    return ScaledRate(images_per_s=batch / max(call_s, 1e-12), call_s=call_s, step_s=step_s,
                      setup_s=setup_s, timed_steps=(short, long), total_steps=total_steps)


def total_subpixels(model: torch.nn.Module) -> int:
    channels, height, width = model.image_shape
    return channels * height * width
