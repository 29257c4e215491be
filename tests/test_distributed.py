"""DDP over gloo: two processes on halves of each global batch make the same updates as one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_worker import run

from harness import atomic
from harness.engine.distributed import DistInfo, env_info, local_slice
from harness.errors import UserError

WORKER = Path(__file__).resolve().parent / "train_worker.py"


def test_local_slices_cover_the_global_batch():
    slices = [local_slice(12, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [list(range(12))[s] for s in slices] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_env_info_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_info() == DistInfo(rank=3, world_size=4, local_rank=1)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="RANK"):
        env_info()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    steps = 10
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", str(WORKER), str(tmp_path / "ddp"), str(out),
                    "--max-steps", str(steps), "--noise-std", "0"],
                   env=env, check=True, timeout=300)
    ddp = torch.load(out, weights_only=True)
    single = run(tmp_path / "single", max_steps=steps, noise_std=0.0)
    assert ddp["images_seen"] == single["images_seen"] == steps * 8
    for part in ("model", "ema"):
        for key, value in single[part].items():
            torch.testing.assert_close(ddp[part][key], value, rtol=1e-5, atol=1e-6)
    assert ddp["final_loss_bits_per_dim"] == pytest.approx(single["final_loss_bits_per_dim"],
                                                           rel=1e-6)
    # Rank 0 alone wrote: one row per step, and checkpoints carry both ranks' RNG states.
    rows = [r for r in atomic.read_jsonl(tmp_path / "ddp" / "train_log.jsonl")
            if r["type"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    state = torch.load(tmp_path / "ddp" / "checkpoints" / f"step-{steps}.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2


def _evaluate_in_one_and_two_processes(tmp_path, *worker_args: str) -> tuple[dict, dict]:
    """Run tests/eval_worker.py in one process and under torchrun with 2 gloo ranks; returns
    (one, two): each {"per_image": array, "world_size": int, "rows": list}."""
    import json

    worker = Path(__file__).resolve().parent / "eval_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    subprocess.run([sys.executable, str(worker), str(tmp_path / "one"), *worker_args], env=env,
                   check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", str(worker), str(tmp_path / "two"), *worker_args],
                   env=env, check=True, timeout=300)
    runs = []
    for name in ("one", "two"):
        run_record = json.loads((tmp_path / name / "rows.json").read_text())
        run_record["per_image"] = np.load(tmp_path / name / "per_image_test_bits_per_dim_raw.npy")
        runs.append(run_record)
    return runs[0], runs[1]


FIGURES = ("test_bits_per_dim", "test_bits_per_dim_ci95", "kl_bits_per_dim",
           "distortion_bits_per_dim", "active_units", "iw_bits_per_dim")


def _figures(rows: list[dict]) -> list[tuple]:
    return [(r["metric"], r.get("layer"), r["value"]) for r in rows if r["metric"] in FIGURES]


@pytest.mark.slow
def test_two_gloo_processes_evaluate_every_image_as_one_process(tmp_path):
    """Sharded evaluation: each rank takes every other batch, and the gathered per-image values
    (and so every figure) equal one process's exactly."""
    one, two = _evaluate_in_one_and_two_processes(tmp_path)
    assert one["per_image"].shape == (23,) and np.array_equal(one["per_image"], two["per_image"])
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert any(value > 0 for metric, _, value in _figures(one["rows"]) if metric == "active_units")
    assert _figures(one["rows"]) == _figures(two["rows"])


@pytest.mark.slow
def test_active_units_when_one_rank_holds_none_of_their_images(tmp_path):
    """Active units on the first 4 images: all in rank 0's first batch, so rank 1 adds zeros of
    the shapes rank 0 found, and the counts equal one process's."""
    one, two = _evaluate_in_one_and_two_processes(tmp_path, "4")
    assert any(value > 0 for metric, _, value in _figures(one["rows"]) if metric == "active_units")
    assert _figures(one["rows"]) == _figures(two["rows"])
