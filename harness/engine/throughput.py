"""Cost measurements: forward FLOPs, sampling throughput, peak memory.

The VDVAE paper's sampling claim (Child 2021: samples "thousands of times faster" than the PixelCNN,
one decoder pass per sample versus one network evaluation per sub-pixel for an autoregressive model;
the paper gives no wall-clock figure) is checked here with wall-clock numbers, measured side by side
on the same device: warm-up calls first, device synchronisation around every timed round, rounds
until the last few agree within a tolerance (`sampling_speed`), reported with their spread.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU) so that wall-clock timings are honest."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(model: nn.Module, images: torch.Tensor) -> float:
    """Forward FLOPs of `model.loss` per image, counted by torch.utils.flop_counter.

    Counts the ops the flop counter knows (convolutions, matmuls: the bulk of the cost), on a
    small batch of uint8 images (N, C, H, W), divided by N.
    """
    assert images.dtype == torch.uint8 and images.dim() == 4, (images.dtype, images.shape)
    images = images.to(model_device(model))
    counter = FlopCounterMode(display=False)
    # Not under inference mode: the counter's module tracker hooks autograd on parameters that a
    # module receives as inputs (VDVAE's learned bias), which inference mode forbids.
    with torch.inference_mode(False), torch.no_grad(), counter:
        model.loss(images)
    return counter.get_total_flops() / images.shape[0]


def saved_activation_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors one training forward of `model.loss` keeps for backward (weights
    left out): the activation memory of a step. Works on the meta device, where it costs no
    arithmetic, so a plan can size any preset. A tensor saved by several ops counts once."""
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # hold each counted tensor so that its id is not reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in params and id(tensor) not in saved:
            saved[id(tensor)] = tensor.numel() * tensor.element_size()
            keep.append(tensor)
        return tensor

    images = images.to(model_device(model))
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(images)["loss_nats_per_dim"].float().mean()
    finally:
        model.train(was_training)
    return sum(saved.values())


def training_memory_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Expected peak memory of a training step at this batch: the weights, their gradients, two
    AdamW moments and the EMA copy (5 × float32 parameters) plus the saved activations."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 5 * weights + saved_activation_bytes(model, images)


@dataclass(frozen=True)
class SpeedMeasurement:
    """A sampling speed from timed rounds: the median, min and max images/s of the last
    `window` rounds (all of them when fewer ran), their relative spread (max - min) / median,
    how many rounds ran and whether the spread came under the tolerance (`settled`) or a cap on
    rounds or time stopped the measurement first."""

    images_per_s: float
    min_images_per_s: float
    max_images_per_s: float
    spread_fraction: float
    rounds: int
    settled: bool


def spread_fraction(rates: list[float]) -> float:
    """(max - min) / median of images/s figures: 0 when they agree exactly."""
    median = statistics.median(rates)
    return (max(rates) - min(rates)) / median if median > 0 else float("inf")


def rounds_settled(rates: list[float], window: int, tolerance: float) -> bool:
    """The stopping rule: at least `window` rounds, and the last `window` within `tolerance`
    relative spread of each other."""
    return len(rates) >= window and spread_fraction(rates[-window:]) <= tolerance


def measure_until_settled(time_round: Callable[[], float], window: int = 3,
                          tolerance: float = 0.05, max_rounds: int = 10, max_s: float = 120.0,
                          clock: Callable[[], float] = time.perf_counter) -> SpeedMeasurement:
    """Call `time_round()` (one round's images/s) until the last `window` rounds agree within
    `tolerance` (relative spread), `max_rounds` rounds have run, or `max_s` seconds have passed
    (at least one round always runs). The figure is the median of the last `window` rounds."""
    assert window >= 1 and max_rounds >= 1 and tolerance >= 0 and max_s > 0, \
        (window, max_rounds, tolerance, max_s)
    start = clock()
    rates: list[float] = []
    while True:
        rates.append(float(time_round()))
        settled = rounds_settled(rates, window, tolerance)
        if settled or len(rates) >= max_rounds or clock() - start >= max_s:
            break
    last = rates[-window:]
    return SpeedMeasurement(images_per_s=float(statistics.median(last)),
                            min_images_per_s=min(last), max_images_per_s=max(last),
                            spread_fraction=spread_fraction(last), rounds=len(rates),
                            settled=settled)


def sampling_speed(model: nn.Module, batch_size: int, repeats: int = 3, warmup: int = 1,
                   window: int = 3, tolerance: float = 0.05, max_rounds: int = 10,
                   max_s: float = 120.0, **sample_kwargs) -> SpeedMeasurement:
    """Images/s of `model.sample(batch_size, **sample_kwargs)`: `warmup` untimed calls, then
    rounds of `repeats` calls timed together (synchronised), until `measure_until_settled`
    stops. Meant to run with nothing else on the machine (the runner's speed phase)."""
    assert batch_size >= 1 and repeats >= 1 and warmup >= 0, (batch_size, repeats, warmup)
    device = model_device(model)

    def one_round() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model.sample(batch_size, **sample_kwargs)
        synchronize(device)
        return repeats * batch_size / max(time.perf_counter() - start, 1e-9)

    with torch.inference_mode():
        for _ in range(warmup):
            model.sample(batch_size, **sample_kwargs)
        synchronize(device)
        return measure_until_settled(one_round, window, tolerance, max_rounds, max_s)


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """Peak memory: allocated GPU memory on CUDA (since the last reset), else the process's peak
    resident set size (ru_maxrss: kilobytes on Linux, bytes on macOS). Without `device`: the
    current GPU when CUDA is in use, else the CPU figure."""
    if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)
