"""benchmarks/ceiling.py: the float32 peak is the faster of the BLAS matmul and oneDNN's GEMM."""

from __future__ import annotations

import math

from ceiling import float32_peak, onednn_gemm_gflops_per_s  # benchmarks/, beside this file


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
