"""The float32 ceiling of a training step on this machine, measured in the benchmark's own run:
the best speed of two dense float32 products with the benchmark's threads (like nanoGPT's
`estimate_mfu`, against a measured peak instead of a datasheet one), and the forward FLOPs per
image of the model (torch.utils.flop_counter, counted on the meta device: shapes only, no
compute). A step that ran every FLOP at that speed, taking backward as twice the forward, takes
`3 · flops · batch / peak`: no float32 implementation of the architecture is faster here, so a
speed-up goal beyond `baseline step / that floor` cannot be met on this machine.

The two products: a 4096² matmul (torch's BLAS, MKL in the CPU wheel) and the same kind of GEMM
as a channels_last 1×1 convolution (oneDNN's JIT kernels, which run the models' convolutions).
Both are needed: MKL does not take its AVX-512 path on AMD CPUs, where a ceiling from the matmul
alone reads far too low (docs/benchmarks.md). On Intel CPUs the two agree more closely.

The peak is a bound no kernel beats; the convolutions a model actually runs come nowhere near it
at small channel counts. `convolution_floor` gives the tighter bound: every convolution of one
training step, each shape timed alone (forward and backward, warm caches, best of a few), summed.
A step cannot be faster than its convolutions, so `baseline step / that floor` caps any speed-up
that keeps these kernels (oneDNN's, in the CPU wheel), whatever happens to the rest of the step.
"""

from __future__ import annotations

import collections
import contextlib
import time

import torch
from torch.overrides import TorchFunctionMode

from harness.engine import throughput
from models import registry


def _best_s(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `fn()`, after one untimed call (thread pool,
    library buffers, oneDNN's primitive)."""
    fn()
    best_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best_s = min(best_s, time.perf_counter() - start)
    return best_s


@contextlib.contextmanager
def _torch_threads(threads: int):
    """Run the block with `threads` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resolved(family: str, config):
    """`family`'s registry entry and `config` as its config object (a dict gives the fields)."""
    entry = registry.get(family)
    return entry, entry.config_cls(**config) if isinstance(config, dict) else config


def _best_gflops_per_s(product, flops: float, threads: int, repeats: int) -> float:
    """`flops` over the best of `repeats` calls of `product()` with `threads` torch threads."""
    with _torch_threads(threads):
        return flops / _best_s(product, repeats) / 1e9


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
    entry, config = _resolved(family, config)
    with torch.device("meta"):
        model = entry.build_model(config)
        images = torch.zeros(1, *entry.image_shape(config), dtype=torch.uint8)
    return throughput.flops_per_image(model, images)


def floor_step_s(forward_flops: float, batch: int, peak_gflops_per_s: float) -> float:
    """Seconds of a training step (forward + backward at twice the forward) at the peak."""
    return 3 * forward_flops * batch / (peak_gflops_per_s * 1e9)


class _RecordConvolutions(TorchFunctionMode):
    """Counts the 2-D convolutions a forward calls, keyed by everything that sets their cost."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.conv2d, torch.nn.functional.conv2d):
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            call = {**dict(zip(names, args)), **kwargs}
            x, weight = call["input"], call["weight"]

            def pair(name, default):  # an int, a pair, or a string such as "same"
                value = call.get(name, default)
                if isinstance(value, (tuple, list)):
                    return tuple(value)
                return value if isinstance(value, str) else (value, value)

            self.counts[(tuple(x.shape), tuple(weight.shape), call.get("bias") is not None,
                         pair("stride", 1), pair("padding", 0), pair("dilation", 1),
                         int(call.get("groups", 1)), x.requires_grad,
                         x.is_contiguous(memory_format=torch.channels_last))] += 1
        return func(*args, **kwargs)


def _convolution_s(key, repeats: int) -> float:
    """Best-of-`repeats` seconds of one convolution's forward and backward (input gradient when
    its input needs one, weight and bias gradients) on random data of the recorded layout."""
    shape, weight_shape, has_bias, stride, padding, dilation, groups, input_grad, nhwc = key
    layout = torch.channels_last if nhwc else torch.contiguous_format

    def random(size) -> torch.Tensor:
        # Strides set by the layout even for one input channel, as `module.to(memory_format=)`
        # sets a model's weights: `.contiguous()` would keep NCHW strides there, on which oneDNN
        # runs the models' first convolutions slower than in the models (docs/benchmarks.md).
        return torch.empty(size, memory_format=layout).normal_()

    x = random(shape).requires_grad_(input_grad)
    weight = random(weight_shape).requires_grad_()
    bias = torch.zeros(weight_shape[0], requires_grad=True) if has_bias else None
    wrt = [t for t in (x, weight, bias) if t is not None and t.requires_grad]

    def step():
        out = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
        torch.autograd.grad(out, wrt, grad_output)

    with torch.no_grad():
        grad_output = random(torch.nn.functional.conv2d(
            x, weight, None, stride, padding, dilation, groups).shape)
    return _best_s(step, repeats)


def convolution_floor(family: str, config, batch: int, threads: int,
                      repeats: int = 3) -> dict[str, float]:
    """Seconds the convolutions of one training step of `family`'s model at `batch` take here
    with `threads` threads, each shape timed alone (see the module docstring):
    `convolution_floor_s`, with `convolutions_per_step` and the distinct shapes timed."""
    entry, config = _resolved(family, config)
    torch.manual_seed(0)
    model = entry.build_model(config)
    images = torch.randint(0, 256, (batch, *entry.image_shape(config)), dtype=torch.uint8)
    record = _RecordConvolutions()
    with record:
        model.loss(images)
    with _torch_threads(threads):
        total_s = sum(count * _convolution_s(key, repeats) for key, count in record.counts.items())
    return {"convolution_floor_s": total_s,
            "convolutions_per_step": sum(record.counts.values()),
            "convolution_shapes": len(record.counts)}
