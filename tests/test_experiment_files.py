"""Every shipped experiment file validates, opens with its command / runtime / expectations, and
runs end to end at smoke size on faked data (the real-data smoke run is test_runner_smoke.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import cifar_batches, data_root, write_cifar_dir, write_idx_dataset  # noqa: F401
from harness.experiment.load import load_experiment
from harness.run.runner import run_experiment

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))
NAMES = [p.stem for p in EXPERIMENTS]


def test_the_shipped_experiments_are_there():
    assert {"smoke", "depth_sweep", "depth_sweep_imagenet32", "depth_sweep_cifar10",
            "sampling_speed"} <= set(NAMES)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=NAMES)
def test_experiment_file_validates_at_full_and_smoke_size(path):
    full = load_experiment(path)
    assert full.name == path.stem and full.cells
    smoke = load_experiment(path, overrides=["smoke=true"])
    assert smoke.name == f"{path.stem}_smoke" and smoke.smoke
    if full.smoke:  # smoke.yaml itself
        return
    # A smoke run is smaller in every way it can be: each smoke cell against the full-size
    # cells of the same model (the smoke run may have fewer cells, so positions do not pair).
    full_cells: dict[str, list] = {}
    for cell in full.cells:
        full_cells.setdefault(cell.model, []).append(cell)
    for small in smoke.cells:
        big = full_cells.get(small.model)
        assert big, f"smoke cell {small.name}: no model '{small.model}' at full size"
        if small.params:
            assert small.params <= max(c.params for c in big)
        if small.train is not None and small.train.max_steps is not None:
            assert all(c.train.max_steps is None or small.train.max_steps <= c.train.max_steps
                       for c in big)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=NAMES)
def test_experiment_file_opens_with_command_runtime_and_expectations(path):
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lower())
    text = " ".join(header)
    assert f"experiments/{path.name}" in text and "harness run" in text  # the command
    assert "minute" in text or "days" in text or "hours" in text  # expected runtime
    assert "cpu" in text or "gpu" in text  # hardware
    assert "you should see" in text  # what to expect


def test_depth_sweep_is_the_main_job():
    experiment = load_experiment(EXPERIMENTS[NAMES.index("depth_sweep")])
    vdvae = [c for c in experiment.cells if c.family == "vdvae"]
    depths = sorted({c.effective_depth for c in vdvae})
    assert len(depths) >= 5 and depths[-1] == vdvae[0].model_config.n_top_down == 14
    assert len({c.params for c in vdvae}) == 1 and 350_000 < vdvae[0].params < 450_000
    seeds = {(c.effective_depth, c.seed) for c in vdvae}
    assert {(1, 0), (1, 1), (14, 0), (14, 1)} <= seeds  # the extremes twice
    pixelcnn = [c for c in experiment.cells if c.family == "pixelcnn"]
    assert len(pixelcnn) == 1
    assert abs(pixelcnn[0].params - vdvae[0].params) / vdvae[0].params < 0.03
    assert {c.model for c in experiment.cells if c.kind == "codec"} == {"png", "webp"}
    assert experiment.data.test_images is None  # every test image
    assert experiment.runner.time_budget_min <= 60


def _fake_data(root: Path, name: str) -> None:
    if name in ("smoke", "depth_sweep"):
        write_idx_dataset(root / "fashion_mnist", 5064, 32)  # 64 train after validation
    elif name == "depth_sweep_cifar10":
        write_cifar_dir(root / "cifar10", cifar_batches(16, 24))
    elif name == "depth_sweep_imagenet32":
        rng = np.random.default_rng(0)
        (root / "imagenet32").mkdir()
        for split, n in (("train", 80), ("valid", 24)):
            array = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            np.save(root / "imagenet32" / f"imagenet32-{split}.npy", array)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["depth_sweep", "depth_sweep_cifar10",
                                  "depth_sweep_imagenet32", "sampling_speed"])
def test_smoke_size_run_of_shipped_experiment(name, data_root, tmp_path):  # noqa: F811
    _fake_data(data_root, name)
    results = tmp_path / "results"
    overrides = ["smoke=true", "runner.report=false"]
    if name in ("depth_sweep", "depth_sweep_cifar10"):  # fakes cannot match real checksums
        overrides.append("data.options.verify_checksums=false")
    assert run_experiment(EXPERIMENTS[NAMES.index(name)], results_dir=results,
                          overrides=overrides) == 0
    with open(results / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {r["status"] for r in rows} == {"done"}
    assert all(float(r["params"]) > 0 for r in rows if r["model"] != "codec")
