"""Elementwise pieces the Gated PixelCNN (models.pixelcnn) and its samplers
(models.pixelcnn_sampling) share: the value count, the gate and the input scaling."""

from __future__ import annotations

import functools

import torch

N_VALUES = 256  # 8-bit sub-pixels: 256 classes per softmax


def _tanh_via_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


class _Tanh(torch.autograd.Function):
    """tanh(x) computed as 2σ(2x) - 1: the same function (within ~2e-7 of `torch.tanh` in
    float32) through the sigmoid kernel, which runs much faster than ATen's tanh kernel on some
    CPUs (docs/benchmarks.md). Backward is tanh's own: grad (1 - tanh²), from the saved output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = _tanh_via_sigmoid(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, out)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """`torch.tanh` through the sigmoid kernel (see `_Tanh`); differentiable."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Tanh.apply(x)
    return _tanh_via_sigmoid(x)


@functools.lru_cache(maxsize=64)
def _gate_scale(maps: int, dim: int, ndim: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """2 over the first half of `maps` along `dim`, 1 over the second, shaped to broadcast."""
    shape = [1] * ndim
    shape[dim] = maps
    scale = torch.ones(maps, dtype=dtype, device=device)
    scale[:maps // 2] = 2.0
    return scale.view(shape)


def gate(pre: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """tanh(f) ⊙ σ(g) over the two halves of `pre` along `dim` (Section 2.1, equation 2).

    Without gradients (evaluation, both samplers) as σ(2f) and σ(g) from one sigmoid over the
    whole dense `pre`, then (2σ(2f) - 1) σ(g): elementwise kernels over the strided halves of a
    channels_last tensor run a short inner loop per pixel, so fewer of them is faster."""
    if torch.is_grad_enabled() and pre.requires_grad:
        f, g = pre.chunk(2, dim=dim)
        return tanh(f) * torch.sigmoid(g)
    dim = dim % pre.dim()
    scale = _gate_scale(pre.shape[dim], dim, pre.dim(), pre.dtype, pre.device)
    sig_2f, sig_g = torch.sigmoid(pre * scale).chunk(2, dim=dim)
    return torch.addcmul(sig_g.neg(), sig_2f, sig_g, value=2.0)


def images_to_input(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 values → floats in [-1, 1] (x / 127.5 - 1), the network input and DMOL target."""
    return images.to(dtype) / 127.5 - 1.0
