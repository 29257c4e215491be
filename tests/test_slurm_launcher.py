"""`--launcher slurm` against a real one-node Slurm cluster (tests/slurm_cluster.py), plus the
parts that need no cluster (log tails, lock reclaim after a requeue, a CellJob run in-process
by submitit's debug executor)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from harness.atomic import read_jsonl
from harness.cli import main
from harness.contract import SUMMARY_COLUMNS
from harness.experiment.load import load_experiment
from harness.run import locks
from harness.run.results_folder import CellContext, read_status
from harness.run.launchers import slurm
from harness.run.launchers.slurm_job import CellJob

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Columns that time the machine, not the model: they differ between any two runs.
TIMING_COLUMNS = {"wall_s", "train_images_per_s", "sample_images_per_s",
                  "sample_images_per_s_cached"}

TWO_MODELS = """\
name: two_models
data: {dataset: fashion_mnist, train_images: 64, test_images: 16}
models:
  vdvae: {family: vdvae, preset: fmnist_tiny, sweep: {grid: {effective_depth: [1]}}}
  pixelcnn:
    family: pixelcnn
    preset: cpu_mnist
    config: {head_channels: null}
    match: {params_of: vdvae, tolerance: 0.1}
    eval: {sample_methods: [cached]}
train: {batch_size: 8, max_steps: MAX_STEPS, warmup_steps: 1, checkpoint_every_steps: 2,
        log_every_steps: 1, progress: lines}
eval: {batch_size: 16, iw_k: 2, iw_max_images: 4, sample_batch_size: 2, sample_repeats: 1,
       sample_warmup: 0, n_grid_samples: 4}
codecs: [png]
runner: {threads_per_job: 1, estimate: flops, flops_per_s: 2.0e9, report: false,
         slurm: {time_min: 10, poll_s: 0.5}}
"""


def _experiment(tmp_path: Path, max_steps: int = 3) -> Path:
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    path = tmp_path / "two_models.yaml"
    path.write_text(TWO_MODELS.replace("MAX_STEPS", str(max_steps)))
    return path


def _summary(results: Path) -> dict[str, dict]:
    with open(results / "summary.csv", newline="") as handle:
        return {r["cell"]: {k: v for k, v in r.items() if k not in TIMING_COLUMNS}
                for r in csv.DictReader(handle)}


def _launch(results: Path, cell: str) -> dict:
    return json.loads((results / "cells" / cell / "slurm.json").read_text())


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --------------------------------------------------------------------------- no cluster


def test_log_tail_keeps_last_lines_and_skips_a_prefix(tmp_path):
    log = tmp_path / "job.err"
    log.write_text("one\n\nsubmitit INFO x\ntwo\nthree\nsubmitit INFO y\n")
    assert slurm.log_tail(str(log), lines=2) == "three | submitit INFO y"
    assert slurm.log_tail(str(log), lines=2, skip_prefix="submitit ") == "two | three"
    assert slurm.log_tail(str(tmp_path / "absent")) == ""
    assert slurm.log_tail(None) == ""


def test_a_requeued_job_reclaims_its_own_lock_even_from_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert locks.slurm_job_id() == "41_3"
    # The same job's earlier process on another node: reclaimable (only it could hold it).
    mine = {"pid": 1, "host": "othernode", "slurm_job_id": "41_3"}
    assert locks.is_stale(mine)
    # Another job's lock on another node: never judged from here.
    other = {"pid": 1, "host": "othernode", "slurm_job_id": "41_4"}
    assert not locks.is_stale(other)
    lock = locks.CellLock(tmp_path / "cells" / "c", tmp_path)
    assert lock.acquire()
    assert locks.read_lock(lock.path)["slurm_job_id"] == "41_3"
    assert not locks.is_stale(locks.read_lock(lock.path))  # held by this very process
    lock.release()


def test_cell_job_runs_a_cell_and_rebuilds_the_summary(tmp_path):
    experiment = load_experiment(_experiment(tmp_path))
    cells = list(experiment.cells)
    codec = next(c for c in cells if c.kind == "codec")
    context = CellContext(experiment=experiment.name, data=experiment.data,
                          sampling_speed=experiment.sampling_speed)
    results = tmp_path / "results"
    executor = submitit.DebugExecutor(folder=tmp_path / "submitit")
    job = executor.submit(CellJob(context=context, root=str(results), cells=tuple(cells),
                                  summary_weights="raw"), codec)
    assert job.result() == "done"
    assert read_status(results / "cells" / codec.name)["status"] == "done"
    rows = _summary(results)
    assert rows[codec.name]["status"] == "done"
    assert 3.0 < float(rows[codec.name]["test_bits_per_dim"]) < 8.0
    assert rows["vdvae_g01_s0"]["status"] == "pending"  # not run: listed, not invented


# --------------------------------------------------------------------------- on the cluster


@pytest.mark.slow
def test_slurm_run_gives_the_local_summary(slurm_cluster, tmp_path, capsys):
    experiment = _experiment(tmp_path)
    assert main(["run", str(experiment), "--results", str(tmp_path / "local")]) == 0
    assert main(["run", str(experiment), "--results", str(tmp_path / "slurm"),
                 "--launcher", "slurm"]) == 0
    out = capsys.readouterr().out
    local, on_slurm = _summary(tmp_path / "local"), _summary(tmp_path / "slurm")
    assert set(on_slurm) == {"vdvae_g01_s0", "pixelcnn_s0", "codec_png"}
    assert on_slurm == local
    assert {r["status"] for r in on_slurm.values()} == {"done"}
    for cell in on_slurm:
        job = _launch(tmp_path / "slurm", cell)["job_id"]
        assert f"→ {cell}: Slurm job {job}" in out and f"{cell}: done (job {job})" in out
        status = read_status(tmp_path / "slurm" / "cells" / cell)
        assert status["slurm_job_id"] == job and Path(status["log"]).is_file()
    # All cells went out as one job array.
    assert len({_launch(tmp_path / "slurm", c)["job_id"].split("_")[0] for c in on_slurm}) == 1
    # Then the speed phase, as its own job once the array had ended: both models timed.
    speed_job = json.loads((tmp_path / "slurm" / "speed_phase_slurm.json").read_text())
    assert speed_job["after"] == [_launch(tmp_path / "slurm", "vdvae_g01_s0")["job_id"]
                                  .split("_")[0]]
    speed = [r for r in read_jsonl(tmp_path / "slurm" / "metrics.jsonl")
             if r["metric"] == "sample_images_per_s"]
    assert {r["cell"] for r in speed} == {"vdvae_g01_s0", "pixelcnn_s0"}
    assert all(r["min_images_per_s"] <= r["value"] <= r["max_images_per_s"] for r in speed)


def _harness(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_job_requeued_mid_training_resumes_to_the_same_result(slurm_cluster, tmp_path):
    # Long enough (~10 s of training on an idle core, more on a busy one) that Slurm's SIGKILL
    # lands mid-training: submitit ignores the SIGTERM that comes first, and the kill took up to
    # ~5 s after it on this one-node cluster (KillWait=2).
    experiment = _experiment(tmp_path, max_steps=300)
    cell = "vdvae_g01_s0"
    only = ["--set", "models.pixelcnn.kind=speed", "--set", "codecs=[]",
            "--set", "train.checkpoint_every_steps=10",
            "--set", "sampling_speed={batch_sizes: [1], repeats: 1, warmup: 0}"]
    results = tmp_path / "slurm"
    runner = _harness("run", str(experiment), "--results", str(results), "--launcher", "slurm",
                      *only)
    checkpoints = results / "cells" / cell / "checkpoints"
    _wait_for(lambda: any(checkpoints.glob("step-*.pt")), 120,
              "the running job's first checkpoint")
    job = _launch(results, cell)["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    out, _ = runner.communicate(timeout=240)
    assert runner.returncode == 0, out
    assert f"{cell}: done (job {job})" in out
    status = read_status(results / "cells" / cell)
    assert status["status"] == "done" and (status["resumed_from_step"] or 0) >= 10, status
    assert main(["run", str(experiment), "--results", str(tmp_path / "local"), *only]) == 0
    assert _summary(results)[cell] == _summary(tmp_path / "local")[cell]


@pytest.mark.slow
def test_cancelled_job_fails_and_a_rerun_resubmits_it(slurm_cluster, tmp_path, capsys):
    experiment = _experiment(tmp_path)
    results = tmp_path / "slurm"
    assert main(["run", str(experiment), "--results", str(results), "--launcher", "slurm",
                 "--no-wait"]) == 0
    assert "3 cell(s) submitted" in capsys.readouterr().out
    cancelled = _launch(results, "pixelcnn_s0")["job_id"]
    subprocess.run(["scancel", cancelled], check=True, timeout=30)

    seen = {"status": ""}

    def settled() -> bool:
        main(["status", str(results)])
        seen["status"] = text = capsys.readouterr().out
        # The state column, not the whole text: a log line may say "cancelled while pending".
        states = {line.split()[1] for line in text.splitlines()[1:] if len(line.split()) > 1
                  and not line.startswith(str(results))}
        return not states & {"running", "pending"}
    try:
        _wait_for(settled, 180, "every cell to end")
    except AssertionError as error:
        raise AssertionError(f"{error}; the last `harness status`:\n{seen['status']}") from None
    assert main(["status", str(results)]) == 1  # not every cell is done
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["pixelcnn_s0"].split()[1] == "failed" and cancelled in lines["pixelcnn_s0"]
    assert lines["vdvae_g01_s0"].split()[1] == "done"
    status = read_status(results / "cells" / "pixelcnn_s0")
    # A running job ends CANCELLED; a pending array task cancelled vanishes from Slurm at once.
    assert (f"Slurm job {cancelled} ended CANCELLED" in status["error"]
            or f"Slurm job {cancelled} left Slurm's queue" in status["error"]), status
    assert _summary(results)["pixelcnn_s0"]["status"] == "failed"

    assert main(["run", str(experiment), "--results", str(results), "--launcher", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "2 cell(s) already done; skipped" in out
    # One cell resubmitted, and a speed phase after it (and after the first one's job).
    assert out.count("Slurm job ") == 2 and "→ pixelcnn_s0: Slurm job" in out
    assert "→ speed phase (" in out and "cell(s) to time): Slurm job" in out
    assert _launch(results, "pixelcnn_s0")["job_id"] != cancelled
    assert {r["status"] for r in _summary(results).values()} == {"done"}
    assert main(["status", str(results)]) == 0
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    assert list((tmp_path / "report").glob("*.pdf"))
    assert set(SUMMARY_COLUMNS) >= set(_summary(results)["pixelcnn_s0"])


TWO_TASKS = """\
name: two_tasks
data: {dataset: fashion_mnist, train_images: 64, test_images: 16}
models:
  vdvae: {family: vdvae, preset: fmnist_tiny}
train: {batch_size: 8, max_steps: 3, warmup_steps: 1, checkpoint_every_steps: 2,
        log_every_steps: 1, progress: lines, device: cpu}
eval: {batch_size: 8, iw_k: 2, iw_max_images: 4, sample_batch_size: 2, sample_repeats: 1,
       sample_warmup: 0, n_grid_samples: 4}
runner: {threads_per_job: 1, estimate: flops, flops_per_s: 2.0e9, report: false,
         slurm: {tasks_per_cell: 2, cpus_per_cell: 1, time_min: 10, poll_s: 0.5}}
"""


def _training_figures(results: Path, cell: str) -> dict:
    """The cell's non-timing figures: its summary row without timing columns, plus the skipped
    updates of its metrics rows, and the world size its provenance recorded."""
    rows = read_jsonl(results / "cells" / cell / "metrics.jsonl")
    provenance = json.loads((results / "cells" / cell / "provenance.json").read_text())
    return {**_summary(results)[cell],
            "skipped_updates": [r["value"] for r in rows if r["metric"] == "skipped_updates"],
            "world_size": provenance["machine"]["world_size"]}


@pytest.mark.slow
def test_a_two_task_cell_on_slurm_gives_the_local_torchrun_summary(slurm_cluster, tmp_path):
    """A cell of two Slurm tasks (gloo on the CPU: `tasks_per_cell` without GPUs) forms one
    process group and gives the figures of the same cell under local torchrun, two ranks."""
    _experiment(tmp_path)  # skips without Fashion-MNIST
    path = tmp_path / "two_tasks.yaml"
    path.write_text(TWO_TASKS)
    slurm_run = _harness("run", str(path), "--results", str(tmp_path / "slurm"),
                         "--launcher", "slurm")
    out, _ = slurm_run.communicate(timeout=300)
    assert slurm_run.returncode == 0, out
    job = _launch(tmp_path / "slurm", "vdvae_s0")["job_id"]
    # submitit's per-task logs: the job ran as two tasks.
    assert sorted(p.name for p in (tmp_path / "slurm" / "slurm" / job).glob("*_log.err")) == \
        [f"{job}_0_log.err", f"{job}_1_log.err"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    local = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", "2", "-m", "harness", "run", str(path),
                            "--results", str(tmp_path / "local"), "--jobs", "1"],
                           cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    on_slurm = _training_figures(tmp_path / "slurm", "vdvae_s0")
    under_torchrun = _training_figures(tmp_path / "local", "vdvae_s0")
    assert on_slurm["world_size"] == under_torchrun["world_size"] == 2
    assert on_slurm["status"] == "done" and on_slurm["skipped_updates"] == [0]
    for column in ("test_bits_per_dim", "test_bits_per_dim_ema", "iw_bits_per_dim", "params",
                   "steps", "skipped_updates"):
        assert on_slurm[column] not in ("", None), column
    assert on_slurm == under_torchrun
