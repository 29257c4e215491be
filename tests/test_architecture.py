"""The shape of the code: the import contract holds, and a model family is one `Family` record.

The toy family below is declared inside this test and run through a whole experiment (loader,
sweep, `match:`, plan, training, evaluation, results folder, report) without a line of the
harness knowing it exists: adding a family means writing its module, nothing else.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from data_fixtures import write_idx_dataset
from harness.run.runner import run_experiment
from models import registry
from models.likelihoods import categorical_nats_per_dim

REPO = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    """pyproject.toml's [tool.importlinter] contracts (docs/architecture.md), checked here so
    the layering cannot rot."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0


# --------------------------------------------------------------------------- a toy family


@dataclass(frozen=True)
class ToyConfig:
    image_channels: int = 1
    image_size: int = 28
    hidden: int = 4  # the size field that `match:` solves

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError(f"hidden: must be >= 1, got {self.hidden}")


class ToyIndependentPixels(nn.Module):
    """Every sub-pixel an independent 256-way categorical: logits = W · e_position, with a
    `hidden`-dimensional embedding per position. Exact likelihood, sampled in one shot."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        dims = config.image_channels * config.image_size ** 2
        self.embedding = nn.Parameter(torch.randn(dims, config.hidden) * 0.1)
        self.readout = nn.Linear(config.hidden, 256)

    def logits(self, n: int) -> torch.Tensor:  # (n, C, 256, H, W)
        c, s = self.config.image_channels, self.config.image_size
        per_position = self.readout(self.embedding).view(c, s, s, 256).permute(0, 3, 1, 2)
        return per_position.unsqueeze(0).expand(n, -1, -1, -1, -1)

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_nats_per_dim": categorical_nats_per_dim(self.logits(len(images)), images)}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = self.logits(n).softmax(dim=2).permute(0, 1, 3, 4, 2).reshape(-1, 256)
        c, s = self.config.image_channels, self.config.image_size
        return torch.multinomial(probs, 1, generator=generator).view(n, c, s, s).to(torch.uint8)


def toy_params(config: ToyConfig) -> int:
    dims = config.image_channels * config.image_size ** 2
    return dims * config.hidden + config.hidden * 256 + 256


def solve_hidden(target_params: int, **fields) -> int:
    """The `hidden` whose parameter count is nearest `target_params`."""
    return min(range(1, 257), key=lambda h: abs(toy_params(ToyConfig(**fields, hidden=h))
                                                - target_params))


TOY = registry.Family(
    name="toy", config_cls=ToyConfig, model_cls=ToyIndependentPixels,
    presets={"mnist": {"image_channels": 1, "image_size": 28, "hidden": 4}},
    image_shape=lambda c: (c.image_channels, c.image_size, c.image_size),
    samplers=(registry.Sampler("independent"),), size_field="hidden", solve_size=solve_hidden)

EXPERIMENT = """\
name: toy_family
data:
  dataset: mnist
  data_dir: {data}
  options: {{validation_size: 8}}
  test_images: 16
models:
  toy:
    family: toy
    preset: mnist
    match: {{params: 8500}}
    sweep:
      grid: {{seed: [0, 1]}}
train:
  batch_size: 8
  max_steps: 6
  warmup_steps: 1
  lr: 0.1
  log_every_steps: 1
  checkpoint_every_steps: 3
  progress: "off"
eval:
  weights: [raw, ema]
  iw_k: 4
  sample_batch_size: 2
  sample_repeats: 1
  sample_warmup: 0
  n_grid_samples: 4
codecs: [png]
runner:
  jobs: 1
  threads_per_job: 1
  summary_weights: raw
  estimate: flops
  flops_per_s: 1.0e+10
"""


@pytest.fixture
def toy_family():
    registry.register(TOY)
    yield TOY
    registry.unregister(TOY.name)


@pytest.mark.smoke
def test_a_family_declared_in_a_test_runs_a_whole_experiment(tmp_path, toy_family):
    write_idx_dataset(tmp_path / "data" / "mnist", 72, 16)
    experiment = tmp_path / "toy.yaml"
    experiment.write_text(EXPERIMENT.format(data=tmp_path / "data"))
    results = tmp_path / "results"
    assert run_experiment(experiment, results_dir=results) == 0

    with open(results / "summary.csv", newline="") as handle:
        summary = {row["cell"]: row for row in csv.DictReader(handle)}
    assert set(summary) == {"toy_s0", "toy_s1", "codec_png"}
    hidden = solve_hidden(8500, image_channels=1, image_size=28)
    for name in ("toy_s0", "toy_s1"):
        row = summary[name]
        assert row["status"] == "done" and row["model"] == "toy" and row["steps"] == "6"
        assert int(row["params"]) == toy_params(ToyConfig(hidden=hidden))
        assert row["effective_depth"] == "" and row["iw_bits_per_dim"] == ""  # not declared
        bits = np.load(results / "cells" / name / "per_image_test_bits_per_dim_raw.npy")
        assert bits.shape == (16,) and float(row["test_bits_per_dim"]) == pytest.approx(
            bits.mean())
        assert 0 < bits.mean() < 8.0  # learned something from uniform's 8 bits/dim
        assert float(row["sample_images_per_s"]) > 0  # its own declared sampler
        assert (results / "cells" / name / "samples.png").is_file()
    assert summary["toy_s0"]["test_bits_per_dim"] != summary["toy_s1"]["test_bits_per_dim"]
    assert (results / "toy_family.pdf").is_file()


def test_family_records_state_their_interface():
    for name in registry.names():
        family = registry.get(name)
        for preset in family.presets:
            config = family.build_config(preset)
            shape = family.image_shape(config)
            assert len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)
        if family.size_field is not None:
            assert family.size_field in family.config_fields()
    with pytest.raises(ValueError, match="Did you mean 'vdvae'"):
        registry.get("vdave")
    assert "toy" not in registry.names()  # the toy family above does not outlive its test
