"""A process group's backend follows the cells' `train.device`, not whether CUDA exists: a CPU cell
under torchrun (or as a multi-task Slurm job) on a GPU machine all-reduces over gloo."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from harness.engine import distributed
from harness.errors import UserError
from harness.experiment.load import load_experiment
from harness.run import ranks
from harness.run.results_folder import CellContext
from harness.run.launchers.cell_task import CellTask
from harness.run.runner import run_experiment

EXPERIMENT = """\
name: backend
models:
  on_cpu: {family: pixelcnn, preset: tiny, kind: speed}
  on_gpu: {family: pixelcnn, preset: tiny, kind: speed, train: {device: cuda}}
  on_auto: {family: pixelcnn, preset: tiny, kind: speed, train: {device: auto}}
train: {device: cpu}
sampling_speed: {batch_sizes: [1], repeats: 1, warmup: 0}
runner: {report: false, estimate: flops, flops_per_s: 2.0e9}
"""


class _Stop(Exception):
    """Raised by the patched `distributed.setup` once it has recorded its argument."""


@pytest.fixture
def experiment_file(tmp_path):
    path = tmp_path / "backend.yaml"
    path.write_text(EXPERIMENT)
    return path


@pytest.fixture
def setup_calls(monkeypatch):
    """Record the device type `distributed.setup` is asked for, then stop the caller."""
    calls: list[str] = []

    def setup(device_type: str):
        calls.append(device_type)
        raise _Stop

    monkeypatch.setattr(distributed, "setup", setup)
    return calls


def _cells(path, *names):
    cells = {c.name: c for c in load_experiment(path).cells}
    return [cells[name] for name in names]


def test_device_type_is_the_cells_train_device(experiment_file, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ranks.device_type(_cells(experiment_file, "on_cpu")) == "cpu"
    assert ranks.device_type(_cells(experiment_file, "on_gpu")) == "cuda"
    assert ranks.device_type(_cells(experiment_file, "on_auto")) == "cuda"
    with pytest.raises(UserError, match="on_cpu on cpu, on_gpu on cuda"):
        ranks.device_type(_cells(experiment_file, "on_cpu", "on_gpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ranks.device_type(_cells(experiment_file, "on_auto")) == "cpu"
    with pytest.raises(UserError, match="train.device is 'cuda' but no CUDA GPU"):
        ranks.device_type(_cells(experiment_file, "on_gpu"))


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("auto", "cuda")])
def test_runner_under_torchrun_joins_the_group_of_the_train_device(
        experiment_file, tmp_path, monkeypatch, setup_calls, device, expected):
    """On a GPU machine (CUDA patched visible) two torchrun ranks of a CPU experiment ask for a
    CPU (gloo) group; with `auto` they ask for CUDA (NCCL)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(_Stop):
        run_experiment(experiment_file, results_dir=tmp_path / "results", jobs=1,
                       overrides=["models={on_cpu: {family: pixelcnn, preset: tiny, "
                                  "kind: speed}}", f"train.device={device}"])
    assert setup_calls == [expected]


def test_a_multi_task_cell_joins_the_group_of_its_train_device(experiment_file, tmp_path,
                                                               monkeypatch, setup_calls):
    """The code every rank of a local torchrun cell or a multi-task Slurm job runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    experiment = load_experiment(experiment_file)
    context = CellContext(experiment=experiment.name, data=experiment.data,
                          sampling_speed=experiment.sampling_speed)
    task = CellTask(context=context, root=str(tmp_path), cells=tuple(experiment.cells),
                    summary_weights="raw")
    for name, expected in (("on_cpu", "cpu"), ("on_gpu", "cuda")):
        with pytest.raises(_Stop):
            task.run_distributed(_cells(experiment_file, name)[0])
        assert setup_calls[-1] == expected


def test_one_process_joins_no_group(monkeypatch):
    """Without torchrun's variables `setup` stays a no-op, as before."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup("cpu") == distributed.DistInfo()
    assert not dist.is_initialized()
