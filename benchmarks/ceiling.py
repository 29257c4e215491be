"""The float32 ceiling of a training step on this machine, measured in the benchmark's own run:
the best speed of two dense float32 products with the benchmark's threads (like nanoGPT's
`estimate_mfu`, against a measured peak instead of a datasheet one), and the forward FLOPs per
image of the model (torch.utils.flop_counter, counted on the meta device: shapes only, no
compute). A step that ran every FLOP at that speed, taking backward as twice the forward, takes
`3 · flops · batch / peak`: no float32 implementation of the architecture is faster here, so a
speed-up goal beyond `baseline step / that floor` cannot be met on this machine.

The two products: a 4096² matmul (torch's BLAS, MKL in the CPU wheel) and the same kind of GEMM
as a channels_last 1×1 convolution (oneDNN's JIT kernels, which run the models' convolutions).
Both are needed: MKL does not take its AVX-512 path on AMD CPUs, so on an AMD EPYC (Zen 5) the
matmul reached 107 GFLOP/s on one thread where oneDNN's GEMM reached ~250; a ceiling from the
matmul alone was ~2.4x too low there. On Intel CPUs the two agree more closely.
"""

from __future__ import annotations

import time

import torch

from harness.engine import throughput
from models import registry


def _best_gflops_per_s(product, flops: float, threads: int, repeats: int) -> float:
    """`flops` over the best of `repeats` calls of `product()` with `threads` torch threads,
    after one untimed call (thread pool, library buffers, oneDNN's primitive)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        product()
        best_s = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            best_s = min(best_s, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return flops / best_s / 1e9


def sgemm_gflops_per_s(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """float32 matmuls of two size×size matrices (torch's BLAS), GFLOP/s (2·size³ each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return _best_gflops_per_s(lambda: a @ b, 2 * size ** 3, threads, repeats)


def onednn_gemm_gflops_per_s(threads: int, channels: int = 1024, pixels: int = 16 * 16 * 16,
                             repeats: int = 5) -> float:
    """1×1 convolutions, channels_last, `channels` in and out over `pixels` positions (batch 16,
    so that torch hands them to oneDNN at any thread count), GFLOP/s: a (pixels × channels) ·
    (channels × channels) GEMM run by oneDNN's kernels."""
    side = int(round((pixels / 16) ** 0.5))
    x = torch.randn(16, channels, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 1, 1).contiguous(memory_format=torch.channels_last)
    return _best_gflops_per_s(lambda: torch.nn.functional.conv2d(x, w),
                              2 * 16 * side * side * channels ** 2, threads, repeats)


def float32_peak(threads: int, repeats: int = 5) -> dict[str, float]:
    """The machine's measured float32 peak with `threads` threads, GFLOP/s: the faster of the
    BLAS matmul and oneDNN's GEMM (`peak_gflops_per_s`), each reported too."""
    matmul = sgemm_gflops_per_s(threads, repeats=repeats)
    onednn = onednn_gemm_gflops_per_s(threads, repeats=repeats)
    return {"matmul_gflops_per_s": matmul, "onednn_gemm_gflops_per_s": onednn,
            "peak_gflops_per_s": max(matmul, onednn)}


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
