"""benchmarks/ceiling.py: the float32 peak is the faster of the BLAS matmul and oneDNN's GEMM; the
convolution floor records every convolution of a step, once each, and times each shape."""

from __future__ import annotations

import math

import pytest
from ceiling import (convolution_floor, float32_peak,  # benchmarks/, beside this file
                     onednn_gemm_gflops_per_s)

from models.vdvae import PRESETS, VDVAEConfig


def test_peak_is_the_faster_product(monkeypatch):
    import ceiling

    monkeypatch.setattr(ceiling, "sgemm_gflops_per_s", lambda threads, repeats: 100.0)
    monkeypatch.setattr(ceiling, "onednn_gemm_gflops_per_s", lambda threads, repeats: 240.0)
    assert float32_peak(1) == {"matmul_gflops_per_s": 100.0, "onednn_gemm_gflops_per_s": 240.0,
                               "peak_gflops_per_s": 240.0}
    monkeypatch.setattr(ceiling, "onednn_gemm_gflops_per_s", lambda threads, repeats: 50.0)
    assert float32_peak(1)["peak_gflops_per_s"] == 100.0


def test_onednn_gemm_rate_is_finite_and_leaves_threads_alone():
    import torch

    before = torch.get_num_threads()
    rate = onednn_gemm_gflops_per_s(1, channels=64, pixels=16 * 8 * 8, repeats=1)
    assert math.isfinite(rate) and rate > 0
    assert torch.get_num_threads() == before


def _vdvae_convolutions(config: VDVAEConfig) -> int:
    """Convolution calls in one VDVAE loss: the input conv, 4 per encoder block; per top-down
    block the posterior (c1 as two weight slices, c2, c3, mean and log-std heads), the prior
    (c1, c2, c3 and three heads), z_proj and the 4-conv resblock; the output conv."""
    return 1 + 4 * len(config.encoder_layers) + 17 * len(config.decoder_layers) + 1


@pytest.mark.parametrize("family,config,expected", [
    ("vdvae", PRESETS["fmnist_tiny"], _vdvae_convolutions(VDVAEConfig(**PRESETS["fmnist_tiny"]))),
    ("vdvae", PRESETS["fmnist_400k"], 272),
    # 4 per gated layer (vertical, horizontal, vertical-to-horizontal, skip and residual as one;
    # the last layer has no residual but still one skip conv) and the 2-conv head
    ("pixelcnn", {"image_size": 8, "image_channels": 1, "n_layers": 3, "channels": 6,
                  "kernel_size": 3, "first_kernel_size": 5}, 4 * 3 + 2)])
def test_convolution_floor_counts_every_convolution_of_a_step(family, config, expected):
    import torch

    before = torch.get_num_threads()
    floor = convolution_floor(family, config, batch=2, threads=1, repeats=1)
    assert floor["convolutions_per_step"] == expected
    assert 0 < floor["convolution_shapes"] <= expected
    assert math.isfinite(floor["convolution_floor_s"]) and floor["convolution_floor_s"] > 0
    assert torch.get_num_threads() == before
