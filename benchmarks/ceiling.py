"""The float32 ceiling of a training step on this machine, measured in the benchmark's own run:
the speed of a large matmul with the benchmark's threads (like nanoGPT's `estimate_mfu`, against
a measured peak instead of a datasheet one) and the forward FLOPs per image of the model
(torch.utils.flop_counter, counted on the meta device: shapes only, no compute). A step that
ran every FLOP at that speed, taking backward as twice the forward, takes
`3 · flops · batch / peak`: no float32 implementation of the architecture is faster here, so a
speed-up goal beyond `baseline step / that floor` cannot be met on this machine."""

from __future__ import annotations

import time

import torch

from harness.engine import throughput
from models import registry


def sgemm_gflops_per_s(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """Best of `repeats` float32 matmuls of two size×size matrices with `threads` torch
    threads, in GFLOP/s (2·size³ each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up: thread pool and MKL buffers
        best_s = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best_s = min(best_s, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * size ** 3 / best_s / 1e9


def forward_flops_per_image(family: str, config) -> float:
    """Forward FLOPs of `family`'s model for `config` (a config object or a dict of fields)
    per image, counted on the meta device."""
    entry = registry.get(family)
    if isinstance(config, dict):
        config = entry.config_cls(**config)
    with torch.device("meta"):
        model = entry.build_model(config)
        images = torch.zeros(1, *entry.image_shape(config), dtype=torch.uint8)
    return throughput.flops_per_image(model, images)


def floor_step_s(forward_flops: float, batch: int, peak_gflops_per_s: float) -> float:
    """Seconds of a training step (forward + backward at twice the forward) at the peak."""
    return 3 * forward_flops * batch / (peak_gflops_per_s * 1e9)
