"""Cost measurements: forward FLOPs, sampling throughput, peak memory.

The VDVAE paper's sampling claim (one decoder pass per sample versus one network evaluation per
sub-pixel for an autoregressive model; ../shared/spec/vdvae.md "Sampling-speed claim") is
checked here with wall-clock numbers, measured side by side on the same device: warm-up calls
first, device synchronisation around every timed call, the median of several repeats.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

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


def sampling_images_per_s(model: nn.Module, batch_size: int, repeats: int = 3, warmup: int = 1,
                          **sample_kwargs) -> float:
    """Median images/s of `model.sample(batch_size, **sample_kwargs)` over `repeats` timed calls
    after `warmup` untimed ones."""
    assert batch_size >= 1 and repeats >= 1 and warmup >= 0, (batch_size, repeats, warmup)
    device = model_device(model)
    rates = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            model.sample(batch_size, **sample_kwargs)
            synchronize(device)
            elapsed = time.perf_counter() - start
            if index >= warmup:
                rates.append(batch_size / max(elapsed, 1e-9))
    return float(statistics.median(rates))


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
