"""`harness status`: a cell whose status.json says running but whose lock no live process holds
(Ctrl-C, SIGKILL) reads `interrupted`, with the command that resumes it; the last log line of a
cell run on this machine comes from its own files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_fixtures import write_idx_dataset
from harness.cli import main
from harness.run import status
from harness.run.locks import holder_record

EXPERIMENT = """\
name: watched
data: {{dataset: mnist, data_dir: {data}, options: {{validation_size: 8}}, test_images: 16}}
models:
  vdvae: {{family: vdvae, preset: fmnist_tiny, sweep: {{grid: {{effective_depth: [1, 5]}}}}}}
train: {{batch_size: 8, max_steps: 3, checkpoint_every_steps: 2, log_every_steps: 1,
        progress: "off"}}
eval: {{batch_size: 16, iw_k: 0, n_grid_samples: 0, sample_batch_size: 2, sample_repeats: 1,
       sample_warmup: 0, sample_max_rounds: 1, sample_window_rounds: 1}}
codecs: [png]
runner: {{jobs: 1, threads_per_job: 1, report: false, estimate: flops, flops_per_s: 1.0e+10}}
"""
CELLS = ("vdvae_g01_s0", "vdvae_g05_s0", "codec_png")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of two tiny VDVAE cells and a codec row."""
    root = tmp_path_factory.mktemp("status")
    write_idx_dataset(root / "data" / "mnist", 40, 16)
    path = root / "watched.yaml"
    path.write_text(EXPERIMENT.format(data=root / "data"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["run", str(path), "--results", str(root / "r")]) == 0
    return root / "r"


@pytest.fixture
def results(finished, tmp_path) -> Path:
    copy = tmp_path / "r"
    shutil.copytree(finished, copy)
    return copy


def show(results: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = status.print_status(results)
    return code, out.getvalue()


def rows(results: Path) -> dict[str, dict]:
    return {row["cell"]: row for row in status.cell_states(results)}


def set_running(results: Path, cell: str) -> Path:
    """status.json back to "running", as a run that never finished leaves it."""
    folder = results / "cells" / cell
    record = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text(json.dumps({**record, "status": "running"}))
    return folder


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_finished_run_shows_each_cell_done_with_its_figure(results):
    code, text = show(results)
    assert code == 0
    found = rows(results)
    assert set(found) == set(CELLS)
    for cell in CELLS:
        assert found[cell]["state"] == "done"
        assert found[cell]["last_log_line"].startswith("done in ")
        assert "bits/dim" in found[cell]["last_log_line"]  # the last line is never empty
    assert "interrupted" not in text


@pytest.mark.parametrize("lock", ["none", "dead holder", "pid reused"])
def test_running_without_a_live_lock_holder_reads_interrupted(results, lock):
    folder = set_running(results, "vdvae_g05_s0")
    if lock == "dead holder":
        (folder / "lock").write_text(json.dumps({**holder_record(), "pid": dead_pid()}))
    elif lock == "pid reused":  # our pid, but another process's start time
        (folder / "lock").write_text(json.dumps({**holder_record(), "start_ticks": 1}))
    code, text = show(results)
    assert code == 1
    row = rows(results)["vdvae_g05_s0"]
    assert row["state"] == "interrupted"
    assert row["last_log_line"].startswith("step 3 | epoch 0.750 | loss ")
    assert row["last_log_line"].endswith(" images/s; a re-run resumes it from step 3")
    lines = text.splitlines()
    assert any(line.startswith("vdvae_g05_s0 ") and " interrupted " in line for line in lines)
    assert "1 interrupted, 2 done" in text
    resume = lines[-1]
    assert resume.startswith("1 cell(s) interrupted (no live runner holds them): a re-run "
                             "resumes them from their newest checkpoints: harness run ")
    assert resume.endswith(f"watched.yaml --results {results}")


def test_running_with_a_live_lock_holder_reads_running(results):
    """The same files with a live holder (this process, on this host): still running."""
    folder = set_running(results, "vdvae_g05_s0")
    (folder / "lock").write_text(json.dumps(holder_record()))
    code, text = show(results)
    assert code == 1
    row = rows(results)["vdvae_g05_s0"]
    assert row["state"] == "running"
    assert row["last_log_line"].startswith("step 3 | ")
    assert "re-run" not in row["last_log_line"] and "interrupted" not in text


def test_a_lock_held_on_another_host_is_not_judged_here(results):
    folder = set_running(results, "vdvae_g05_s0")
    (folder / "lock").write_text(json.dumps({**holder_record(), "pid": dead_pid(),
                                             "host": socket.gethostname() + "-elsewhere"}))
    assert rows(results)["vdvae_g05_s0"]["state"] == "running"


def test_interrupted_before_any_checkpoint_says_the_cell_starts_again(results):
    folder = set_running(results, "vdvae_g01_s0")
    shutil.rmtree(folder / "checkpoints")
    (folder / "train_log.jsonl").unlink()
    row = rows(results)["vdvae_g01_s0"]
    assert row["state"] == "interrupted"
    assert row["last_log_line"] == "a re-run starts it again (no checkpoint yet)"


def test_a_failed_cell_shows_its_error_and_a_torn_log_its_last_whole_row(results):
    folder = results / "cells" / "vdvae_g01_s0"
    (folder / "status.json").write_text(json.dumps({"status": "failed", "error": "boom: why",
                                                    "wall_s": 1.0}))
    assert rows(results)["vdvae_g01_s0"]["last_log_line"] == "boom: why"
    folder = set_running(results, "vdvae_g05_s0")
    with open(folder / "train_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"type": "train", "step": 4, "loss_bi')  # a crash mid-append
    assert rows(results)["vdvae_g05_s0"]["last_log_line"].startswith("step 3 | ")


def test_the_resume_command_resumes(results, tmp_path):
    """What status prints is a command that runs: it picks the interrupted cell up again."""
    folder = set_running(results, "vdvae_g05_s0")
    command = show(results)[1].splitlines()[-1].split("checkpoints: ", 1)[1]
    words = command.split()
    assert words[:2] == ["harness", "run"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(words[1:]) == 0
    assert "vdvae_g05_s0" in out.getvalue() and "2 cell(s) already done" in out.getvalue()
    assert rows(results)["vdvae_g05_s0"]["state"] == "done"
    assert os.path.exists(folder / "status.json")


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_a_run_killed_mid_training_reads_interrupted(tmp_path, signal_name):
    """A real `harness run` process stopped while training its first cell: SIGKILL leaves the
    lock of a dead holder, Ctrl-C releases it; either way status says interrupted, and the
    command it prints resumes the cell."""
    write_idx_dataset(tmp_path / "data" / "mnist", 40, 16)
    path = tmp_path / "watched.yaml"
    path.write_text(EXPERIMENT.format(data=tmp_path / "data")
                    .replace("max_steps: 3", "max_steps: 400")
                    .replace("grid: {effective_depth: [1, 5]}", "grid: {effective_depth: [1]}"))
    results = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path),
                                "--results", str(results)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = results / "cells" / "vdvae_g01_s0" / "train_log.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text().count("\n") >= 4):
            assert process.poll() is None and time.monotonic() < deadline, "no training seen"
            time.sleep(0.1)
        process.send_signal(getattr(signal, signal_name))
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    found = rows(results)["vdvae_g01_s0"]
    assert found["state"] == "interrupted", found
    assert " | loss " in found["last_log_line"] and "a re-run " in found["last_log_line"], found
    code, text = show(results)
    assert code == 1 and "1 interrupted" in text and "a re-run resumes them" in text, text
