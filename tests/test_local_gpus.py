"""Local GPUs (harness.run.launchers.gpus): which job gets which devices, the command a
multi-GPU cell runs under, and that path end to end on the CPU (torchrun with gloo, no GPU)."""

from __future__ import annotations

import csv
import sys

import pytest
import torch

from harness.errors import UserError
from harness.run.results_folder import read_status
from harness.run.launchers import gpus
from harness.run.runner import run_experiment


def test_each_job_gets_its_own_devices():
    assert gpus.device_slots((0, 1, 2, 3), jobs=4, per_cell=1) == [(0,), (1,), (2,), (3,)]
    assert gpus.device_slots((0, 1, 2, 3), jobs=8, per_cell=1) == [(0,), (1,), (2,), (3,)]
    assert gpus.device_slots((0, 1, 2, 3), jobs=4, per_cell=2) == [(0, 1), (2, 3)]
    assert gpus.device_slots((4, 6, 7), jobs=2, per_cell=2) == [(4, 6)]
    assert gpus.device_slots((), jobs=4, per_cell=2) == []  # no GPU: CPU as before
    with pytest.raises(UserError, match="gpus_per_cell is 3 but only 2 GPU"):
        gpus.device_slots((0, 1), jobs=1, per_cell=3)


def test_listed_gpus_are_checked_against_the_visible_ones():
    assert gpus.usable_gpus(None, 3) == (0, 1, 2)
    assert gpus.usable_gpus((2, 0), 3) == (2, 0)
    assert gpus.usable_gpus(None, 0) == ()
    with pytest.raises(UserError, match=r"runner.gpus lists \[3\] but this machine shows 2"):
        gpus.usable_gpus((1, 3), 2)


def test_env_and_torchrun_command():
    assert gpus.cuda_env((2, 5)) == {"CUDA_VISIBLE_DEVICES": "2,5"}
    command = gpus.torchrun_command("/r/cells/c/torchrun_job.pkl", 2)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in command
    assert command[-3:] == ["-m", "harness.run.launchers.torchrun_cell",
                            "/r/cells/c/torchrun_job.pkl"]


SPEED_ONLY = """\
name: gpu_slots
models:
  pixelcnn_speed: {family: pixelcnn, preset: tiny, kind: speed}
sampling_speed: {batch_sizes: [1], repeats: 1, warmup: 0, methods: [cached]}
runner: {jobs: 1, threads_per_job: 1, estimate: flops, flops_per_s: 2.0e9, report: false,
         gpus_per_cell: 2}
"""


@pytest.mark.slow
def test_a_two_gpu_cell_runs_under_torchrun(tmp_path, monkeypatch, capsys):
    """Two "GPUs" (device_count patched; CUDA stays off, so the ranks use gloo on the CPU):
    the cell runs in a torchrun child on both, rank 0 writes the results."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    path = tmp_path / "gpu_slots.yaml"
    path.write_text(SPEED_ONLY)
    results = tmp_path / "results"
    assert run_experiment(path, results_dir=results) == 0
    out = capsys.readouterr().out
    assert "devices: 1 job(s), each on its own GPUs 0,1 under torchrun --nproc_per_node 2" in out
    assert "→ pixelcnn_speed (speed" in out and "GPUs 0,1)" in out
    assert read_status(results / "cells" / "pixelcnn_speed")["status"] == "done"
    with open(results / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["status"] == "done" and float(row["sample_images_per_s_cached"]) > 0
