"""`harness run`: the results folder contract, skipping, resuming, failures, concurrent runners.

Everything runs on a tiny fake MNIST (IDX files written by the test) with toy models, so each
run takes seconds; the real smoke experiment is in test_runner_smoke.py.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from data_fixtures import write_idx_dataset
from harness.atomic import read_jsonl
from harness.errors import UserError
from harness.contract import SUMMARY_COLUMNS
from harness.run.results_folder import cell_dir
from harness.run.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
data:
  dataset: mnist
  data_dir: {data}
  options: {{validation_size: 8}}
  test_images: 24
models:
  vdvae:
    family: vdvae
    preset: fmnist_tiny
    sweep:
      grid: {{effective_depth: [1, 5]}}
{extra_models}
train:
  batch_size: 8
  max_steps: {steps}
  warmup_steps: 1
  checkpoint_every_steps: {every}
  log_every_steps: 1
  progress: "off"
eval:
  batch_size: 24
  weights: [raw, ema]
  iw_k: 2
  iw_max_images: 4
  sample_batch_size: 2
  sample_repeats: 1
  sample_warmup: 0
  n_grid_samples: 4
  quality_samples: 0     # the quality study has its own tests; here it would only add imports
  hierarchy_samples: 2
codecs: [png]
runner:
  jobs: 1
  threads_per_job: 1
  report: false
  estimate: flops
  flops_per_s: 1.0e+10
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_idx_dataset(root / "mnist", 72, 24)  # 64 train + 8 validation, 24 test
    return root


def write_experiment(tmp_path: Path, data_dir: Path, steps: int = 4, every: int = 2,
                     extra_models: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(data=data_dir, steps=steps, every=every,
                                extra_models=textwrap.indent(textwrap.dedent(extra_models), "  ")))
    return path


def train_steps(cell: Path) -> list[int]:
    return [row["step"] for row in read_jsonl(cell / "train_log.jsonl") if row["type"] == "train"]


def test_results_folder_follows_the_contract(tmp_path, data_dir, capsys):
    results = tmp_path / "results"
    assert run_experiment(write_experiment(tmp_path, data_dir), results_dir=results) == 0
    out = capsys.readouterr().out
    assert "tiny: 3 cells" in out and "estimated total" in out
    for name in ("experiment.yaml", "plan.json", "metrics.jsonl", "summary.csv"):
        assert (results / name).is_file(), name
    plan = json.loads((results / "plan.json").read_text())
    assert [c["name"] for c in plan["cells"]] == ["vdvae_g01_s0", "vdvae_g05_s0", "codec_png"]
    with open(results / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
    assert [r["status"] for r in rows] == ["done"] * 3
    vdvae = rows[0]
    assert vdvae["model"] == "vdvae" and vdvae["dataset"] == "mnist"
    # No runner.summary_weights in the file: the contract's default, the raw weights.
    assert vdvae["effective_depth"] == "1" and vdvae["weights"] == "raw"
    assert vdvae["steps"] == "4" and float(vdvae["params"]) > 0
    for column in ("test_bits_per_dim", "test_bits_per_dim_ci95", "test_bits_per_dim_ema",
                   "iw_bits_per_dim", "train_images_per_s", "sample_images_per_s",
                   "flops_per_image", "wall_s"):
        assert float(vdvae[column]) > 0, column
    assert vdvae["iw_k"] == "2" and vdvae["error"] == ""
    codec = rows[2]
    assert codec["model"] == "codec" and 0 < float(codec["test_bits_per_dim"]) < 16
    metrics = read_jsonl(results / "metrics.jsonl")
    for row in metrics:
        assert {"experiment", "cell", "model", "dataset", "metric", "value"} <= set(row)
        assert row["experiment"] == "tiny"
    assert {r["cell"] for r in metrics} == {"vdvae_g01_s0", "vdvae_g05_s0", "codec_png"}
    cell = results / "cells" / "vdvae_g01_s0"
    for name in ("config.json", "provenance.json", "status.json", "train_log.jsonl",
                 "per_image_test_bits_per_dim_raw.npy", "per_image_test_bits_per_dim_ema.npy",
                 "samples.png"):
        assert (cell / name).is_file(), name
    assert list((cell / "checkpoints").glob("step-*.pt"))
    provenance = json.loads((cell / "provenance.json").read_text())
    assert provenance["seeds"]["train"] == 0 and provenance["dataset"]["dataset"] == "mnist"
    assert "torch" in provenance["versions"] and "commit" in provenance["git_revision"]
    assert not (cell / "lock").exists()


def test_rerun_skips_done_cells_without_retraining(tmp_path, data_dir, capsys):
    path, results = write_experiment(tmp_path, data_dir), tmp_path / "r"
    assert run_experiment(path, results_dir=results) == 0
    cell = results / "cells" / "vdvae_g01_s0"
    log_before = (cell / "train_log.jsonl").read_bytes()
    status_before = (cell / "status.json").read_bytes()
    capsys.readouterr()
    assert run_experiment(path, results_dir=results) == 0
    out = capsys.readouterr().out
    assert "3 cell(s) already done; skipped" in out and "→" not in out
    assert (cell / "train_log.jsonl").read_bytes() == log_before
    assert (cell / "status.json").read_bytes() == status_before


def test_changed_config_is_refused_not_silently_mixed(tmp_path, data_dir):
    path, results = write_experiment(tmp_path, data_dir), tmp_path / "r"
    assert run_experiment(path, results_dir=results) == 0
    with pytest.raises(UserError, match=r"vdvae_g01_s0 holds a run with a different config "
                                        r"\(train\.max_steps: 4 → 5\)"):
        run_experiment(path, results_dir=results, overrides=["train.max_steps=5"])


def test_failing_cell_is_recorded_and_the_others_go_on(tmp_path, data_dir, capsys):
    wrong_shape = """\
    broken:
      family: pixelcnn
      preset: tiny          # 8x8 RGB: cannot be trained on 28x28 grey images
    """
    path = write_experiment(tmp_path, data_dir, extra_models=wrong_shape)
    results = tmp_path / "r"
    assert run_experiment(path, results_dir=results) == 1
    status = json.loads((results / "cells" / "broken_s0" / "status.json").read_text())
    assert status["status"] == "failed"
    assert "is built for images (3, 8, 8)" in status["error"] and "\n" not in status["error"]
    assert (results / "cells" / "broken_s0" / "error.log").read_text().startswith("Traceback")
    with open(results / "summary.csv", newline="") as handle:
        rows = {r["cell"]: r for r in csv.DictReader(handle)}
    assert rows["broken_s0"]["status"] == "failed" and "(3, 8, 8)" in rows["broken_s0"]["error"]
    assert {rows[n]["status"] for n in ("vdvae_g01_s0", "vdvae_g05_s0", "codec_png")} == {"done"}
    assert "failed: broken_s0" in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, data_dir, capsys):
    results = tmp_path / "r"
    assert run_experiment(write_experiment(tmp_path, data_dir), results_dir=results,
                          dry_run=True) == 0
    out = capsys.readouterr().out
    assert "vdvae_g05_s0" in out and "codec_png" in out and "estimated total" in out
    assert not results.exists()


def test_cell_names_cannot_leave_the_results_folder(tmp_path):
    assert cell_dir(tmp_path, "vdvae_g01_s0") == tmp_path / "cells" / "vdvae_g01_s0"
    for bad in ("..", "../x", "a/../../b", "/etc"):
        with pytest.raises(UserError, match="outside"):
            cell_dir(tmp_path, bad)


def _harness(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "harness", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_runner_leaves_a_cell_that_the_next_run_resumes(tmp_path, data_dir):
    path = write_experiment(tmp_path, data_dir, steps=60, every=5)
    results = tmp_path / "r"
    one_cell = ["models.vdvae.sweep.grid.effective_depth=[5]", "codecs=[]"]
    process = _harness(str(path), "--results", str(results), "--set", one_cell[0], "--set",
                       one_cell[1], cwd=tmp_path)
    checkpoints = results / "cells"
    deadline = time.time() + 60
    while time.time() < deadline:
        if list(checkpoints.glob("*/checkpoints/step-10.pt")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no cleanup at all: the lock stays behind
    process.wait()
    interrupted = [p.parent.parent for p in checkpoints.glob("*/checkpoints/step-*.pt")]
    assert interrupted, "the runner never wrote a checkpoint"
    cell = interrupted[0]
    assert json.loads((cell / "status.json").read_text())["status"] == "running"
    assert (cell / "lock").exists()  # stale: its pid is dead
    steps_before = max(train_steps(cell))

    assert run_experiment(path, results_dir=results, overrides=one_cell) == 0
    status = json.loads((cell / "status.json").read_text())
    assert status["status"] == "done" and status["steps"] == 60
    assert status["resumed_from_step"] >= 10
    steps = train_steps(cell)
    assert steps_before < 60 and sorted(set(steps)) == list(range(1, 61))


@pytest.mark.slow
def test_two_runners_run_each_cell_exactly_once(tmp_path, data_dir):
    path = write_experiment(tmp_path, data_dir, steps=6, every=3)
    results = tmp_path / "r"
    first = _harness(str(path), "--results", str(results), cwd=tmp_path)
    second = _harness(str(path), "--results", str(results), cwd=tmp_path)
    outputs = [first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]]
    assert first.returncode == 0 and second.returncode == 0, outputs
    for name in ("vdvae_g01_s0", "vdvae_g05_s0"):
        # One training run per cell: every step logged once, never twice.
        assert train_steps(results / "cells" / name) == [1, 2, 3, 4, 5, 6]
    started = [line for out in outputs for line in out.splitlines() if line.startswith("→ ")]
    assert len(started) == 3, outputs  # each of the 3 cells started by exactly one runner
    metrics = read_jsonl(results / "metrics.jsonl")  # parses: never torn or interleaved
    assert {r["cell"] for r in metrics} == {"vdvae_g01_s0", "vdvae_g05_s0", "codec_png"}
    per_cell = [r for r in metrics if r["metric"] == "test_bits_per_dim" and r.get("weights")
                == "raw"]
    assert len(per_cell) == 2
    with open(results / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["done"] * 3


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results_as_one_job(tmp_path, data_dir):
    path = write_experiment(tmp_path, data_dir, steps=3, every=3)
    overrides = ["codecs=[]"]
    assert run_experiment(path, results_dir=tmp_path / "one", overrides=overrides) == 0
    assert run_experiment(path, results_dir=tmp_path / "two", overrides=overrides, jobs=2) == 0
    for name in ("vdvae_g01_s0", "vdvae_g05_s0"):
        one = read_jsonl(tmp_path / "one" / "cells" / name / "metrics.jsonl")
        two = read_jsonl(tmp_path / "two" / "cells" / name / "metrics.jsonl")
        pick = lambda rows: [r["value"] for r in rows  # noqa: E731
                             if r["metric"] in ("test_bits_per_dim", "iw_bits_per_dim")]
        assert pick(one) == pick(two)


@pytest.mark.slow
def test_torchrun_ranks_share_cells_and_rank0_writes(tmp_path, data_dir):
    path = write_experiment(tmp_path, data_dir, steps=4, every=2)
    results = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "harness", "run", str(path), "--results", str(results)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    assert process.stdout.count("tiny: 3 cells") == 1  # only rank 0 prints the plan
    with open(results / "summary.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["done"] * 3
    for name in ("vdvae_g01_s0", "vdvae_g05_s0"):
        assert train_steps(results / "cells" / name) == [1, 2, 3, 4]  # one writer
