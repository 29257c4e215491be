"""Checkpoints: verification, fallback, pruning, RNG round trip, and exact resume after SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from train_worker import run

from harness import atomic
from harness.engine.checkpoint import (capture_rng_state, list_checkpoints, load_latest_checkpoint,
                                read_checkpoint, restore_rng_state, save_checkpoint)

WORKER = Path(__file__).resolve().parent / "train_worker.py"


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            torch.randn(2).tolist(), np.random.randn(2).tolist(), random.gauss(0, 1))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    save_checkpoint(tmp_path, 1, {"step": 1, "rng": capture_rng_state()}, keep=1)
    expected = _draws()
    restore_rng_state(read_checkpoint(tmp_path / "step-1.pt")["rng"])
    assert _draws() == expected


def test_keeps_the_newest_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["step-3.pt", "step-3.pt.sha256", "step-4.pt", "step-4.pt.sha256"]


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "truncate_no_sidecar", "garbage"])
def test_corrupt_latest_checkpoint_falls_back_with_one_warning(tmp_path, damage):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.arange(1000.0)}, keep=5)
    latest = tmp_path / "step-4.pt"
    data = latest.read_bytes()
    if damage.startswith("truncate"):
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        latest.write_bytes(data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:])
    else:
        latest.write_bytes(b"not a checkpoint")
    if damage.endswith("no_sidecar") or damage == "garbage":
        (tmp_path / "step-4.pt.sha256").unlink()
    with pytest.warns(UserWarning) as caught:
        loaded = load_latest_checkpoint(tmp_path)
    assert len(caught) == 1 and str(latest) in str(caught[0].message)
    assert "\n" not in str(caught[0].message)
    assert loaded.step == 2 and loaded.state["step"] == 2
    assert (tmp_path / "step-4.pt.corrupt").exists() and not latest.exists()


def test_training_resumes_from_previous_checkpoint_when_latest_is_corrupt(tmp_path):
    reference = run(tmp_path / "reference", max_steps=14)
    partial = run(tmp_path / "resumed", max_steps=10)
    assert partial["steps"] == 10
    latest = tmp_path / "resumed" / "checkpoints" / "step-10.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="step-10.pt"):
        resumed = run(tmp_path / "resumed", max_steps=14)
    assert resumed["resumed_from_step"] == 5
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert resumed["final_loss_bits_per_dim"] == reference["final_loss_bits_per_dim"]


def _comparable(rows):
    """Log rows without the fields that measure time."""
    return [{k: v for k, v in row.items() if k not in ("wall_s", "images_per_s")} for row in rows]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    steps = 40
    reference = run(tmp_path / "reference", max_steps=steps)
    killed_dir, out = tmp_path / "killed", tmp_path / "killed.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(WORKER), str(killed_dir), str(out),
                                "--max-steps", str(steps), "--delay-s", "0.05"], env=env)
    sidecar = killed_dir / "checkpoints" / "step-15.pt.sha256"
    deadline = time.monotonic() + 120
    while not sidecar.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sidecar.exists(), "the worker never wrote its step-15 checkpoint"
    assert not out.exists(), "the worker finished before it was killed"
    log_before = atomic.read_jsonl(killed_dir / "train_log.jsonl")
    assert max(row["step"] for row in log_before) < steps

    resumed = run(killed_dir, max_steps=steps)
    assert resumed["resumed_from_step"] in (15, 20, 25, 30, 35)
    for part in ("model", "ema"):
        for key, value in reference[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)
    assert resumed["final_loss_bits_per_dim"] == reference["final_loss_bits_per_dim"]
    assert _comparable(atomic.read_jsonl(killed_dir / "train_log.jsonl")) == \
        _comparable(atomic.read_jsonl(tmp_path / "reference" / "train_log.jsonl"))


def test_resuming_into_a_different_model_is_a_user_error(tmp_path):
    from tiny_models import TinyConfig, TinyConvModel, realish_images

    from harness.errors import UserError
    from harness.engine.config import TrainConfig
    from harness.engine.train import train

    config = TrainConfig(batch_size=4, max_steps=2, device="cpu", progress="off")
    train(TinyConvModel(TinyConfig(width=8)), realish_images(8), config, tmp_path)
    with pytest.raises(UserError, match="does not fit this model"):
        train(TinyConvModel(TinyConfig(width=4)), realish_images(8), config, tmp_path)


def test_a_corrupt_training_log_on_resume_is_a_user_error_naming_file_and_line(tmp_path):
    """A crash-cut last row is dropped on resume; a line edited into non-JSON stops the resume
    with the file and line, and the log is left as it was."""
    from tiny_models import TinyConfig, TinyConvModel, realish_images

    from harness.engine.config import TrainConfig
    from harness.engine.train import train
    from harness.errors import UserError

    def config(steps):
        return TrainConfig(batch_size=4, max_steps=steps, device="cpu", progress="off",
                           log_every_steps=1, checkpoint_every_steps=1)

    train(TinyConvModel(TinyConfig(width=4)), realish_images(8), config(2), tmp_path)
    log = tmp_path / "train_log.jsonl"
    with open(log, "a") as handle:
        handle.write('{"step": 3, "lo')  # a crash mid-append
    train(TinyConvModel(TinyConfig(width=4)), realish_images(8), config(3), tmp_path)
    assert [row["step"] for row in atomic.read_jsonl(log)] == [1, 2, 3]
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{not json}", *lines[1:]]) + "\n")
    before = log.read_bytes()
    with pytest.raises(UserError, match=f"{log} has a corrupt row at line 2 "):
        train(TinyConvModel(TinyConfig(width=4)), realish_images(8), config(4), tmp_path)
    assert log.read_bytes() == before
