"""scripts/gpu_check.py, the prepared CUDA run: it refuses cleanly without CUDA, and its code
paths hold on a CPU at quick size (the figures themselves come from a GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_with_one_line_and_exit_2_without_cuda(tmp_path):
    done = _run("--out", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_section_runs_at_quick_size_on_cpu(tmp_path):
    done = _run("--out", str(tmp_path), "--quick", "--allow-cpu", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = ("smoke", "bf16_vs_fp32", "tf32", "torchrun_nccl", "train_images_per_s",
                "sample_images_per_s")
    assert all(results[name]["ok"] for name in sections), results
    assert results["smoke"]["returncode"] == results["torchrun_nccl"]["returncode"] == 0
    for name in ("bf16_vs_fp32", "tf32"):  # same seed, same data: the precisions agree
        assert abs(results[name]["difference_bits_per_dim"]) < 0.01
        assert results[name]["agree_within_0.01"]
    speeds = results["train_images_per_s"]["cifar10_tiny"]
    assert set(speeds) == {"fp32_nchw", "fp32_channels_last", "bf16_channels_last"}
    assert all(isinstance(v, float) and v > 0 for v in speeds.values())
    sampling = results["sample_images_per_s"]["32x32x3"]
    assert sampling["pixelcnn_cached"] > sampling["pixelcnn_naive"] > 0
