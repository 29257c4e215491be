"""Sweep expansion (harness.experiment.sweep): cell counts, stable names, precedence, parameter matching."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.experiment.load import load_experiment
from harness.experiment.sweep import safe_name
from models import registry

DEPTHS = """\
data: {dataset: fashion_mnist}
models:
  vdvae:
    family: vdvae
    preset: fmnist_400k
    train: {lr: 5.0e-4}
    sweep:
      grid: {effective_depth: [1, 2, 4, 7, 14], seed: [0]}
      points:
        - {effective_depth: 1, seed: 1}
        - {effective_depth: 14, seed: 1, train.lr: 2.0e-4}
  pixelcnn:
    family: pixelcnn
    config: {image_size: 28, image_channels: 1, n_layers: 8, kernel_size: 3, first_kernel_size: 7}
    match: {params_of: vdvae}
train: {max_steps: 10, lr: 1.0e-3, batch_size: 8}
codecs: [png, webp]
"""


def _load(tmp_path: Path, text: str, overrides=()):
    path = tmp_path / "depths.yaml"
    path.write_text(textwrap.dedent(text))
    return load_experiment(path, overrides=list(overrides))


def test_grid_then_points_give_stable_readable_names(tmp_path):
    experiment = _load(tmp_path, DEPTHS)
    names = [c.name for c in experiment.cells]
    assert names == ["vdvae_g01_s0", "vdvae_g02_s0", "vdvae_g04_s0", "vdvae_g07_s0",
                     "vdvae_g14_s0", "vdvae_g01_s1", "vdvae_g14_lr0.0002_s1", "pixelcnn_s0",
                     "codec_png", "codec_webp"]
    by_name = {c.name: c for c in experiment.cells}
    assert by_name["vdvae_g07_s0"].model_config.effective_depth == 7
    assert by_name["vdvae_g14_lr0.0002_s1"].seed == 1 and by_name["vdvae_g14_lr0.0002_s1"].train.seed == 1
    assert [c.kind for c in experiment.cells].count("codec") == 2
    # Same parameters for every depth: grouping changes the dependency structure only.
    assert len({c.params for c in experiment.cells if c.model == "vdvae"}) == 1


def test_precedence_defaults_file_model_point_command_line(tmp_path):
    experiment = _load(tmp_path, DEPTHS)
    by_name = {c.name: c for c in experiment.cells}
    assert by_name["pixelcnn_s0"].train.lr == 1.0e-3          # experiment-wide train:
    assert by_name["vdvae_g01_s0"].train.lr == 5.0e-4         # the model's own train:
    assert by_name["vdvae_g14_lr0.0002_s1"].train.lr == 2.0e-4         # the sweep point
    assert by_name["vdvae_g01_s0"].train.weight_decay == 0.01  # TrainConfig default
    overridden = _load(tmp_path, DEPTHS, ["train.lr=3.0e-3"])
    assert {c.train.lr for c in overridden.cells if c.train} == {3.0e-3}  # --set beats all


def test_command_line_beats_sweep_point_and_duplicates_collapse(tmp_path):
    experiment = _load(tmp_path, DEPTHS, ["models.vdvae.config.effective_depth=3"])
    names = [c.name for c in experiment.cells if c.model == "vdvae"]
    assert names == ["vdvae_g03_s0", "vdvae_g03_s1", "vdvae_g03_lr0.0002_s1"]


def test_sweep_over_train_field_and_width_names(tmp_path):
    text = """\
    data: {dataset: fashion_mnist}
    models:
      small:
        family: vdvae
        preset: fmnist_tiny
        sweep:
          grid: {width: [8, 16], train.lr: [0.001, 0.0003]}
    train: {max_steps: 1}
    """
    experiment = _load(tmp_path, text)
    assert [c.name for c in experiment.cells] == [
        "small_width08_lr0.001_s0", "small_width08_lr0.0003_s0",
        "small_width16_lr0.001_s0", "small_width16_lr0.0003_s0"]
    assert [c.train.lr for c in experiment.cells] == [0.001, 0.0003, 0.001, 0.0003]
    assert [c.model_config.width for c in experiment.cells] == [8, 8, 16, 16]


def test_pixelcnn_channels_match_vdvae_parameters_within_a_few_percent(tmp_path):
    experiment = _load(tmp_path, DEPTHS)
    vdvae = next(c for c in experiment.cells if c.model == "vdvae")
    pixelcnn = next(c for c in experiment.cells if c.model == "pixelcnn")
    assert pixelcnn.match["field"] == "channels"
    assert pixelcnn.match["target_params"] == vdvae.params
    # The recorded count is the real one of the model the cell builds.
    built = registry.count_parameters(registry.build_model("pixelcnn", pixelcnn.model_config))
    assert built == pixelcnn.params == pixelcnn.match["params"]
    assert abs(built - vdvae.params) / vdvae.params < 0.03


def test_vdvae_width_for_a_parameter_budget(tmp_path):
    text = """\
    data: {dataset: fashion_mnist}
    models:
      vdvae:
        family: vdvae
        preset: fmnist_400k
        match: {params: 210000, tolerance: 0.05}
    """
    cell = _load(tmp_path, text).cells[0]
    assert cell.match["field"] == "width" and cell.model_config.width == cell.match["value"]
    assert abs(registry.get("vdvae").count_params(cell.model_config) - 210_000) / 210_000 < 0.05


def test_unreachable_budget_is_a_user_error(tmp_path):
    from harness.errors import UserError

    text = """\
    data: {dataset: fashion_mnist}
    models:
      vdvae: {family: vdvae, preset: fmnist_tiny, match: {params: 50, tolerance: 0.01}}
    """
    with pytest.raises(UserError, match=r"depths.yaml:3: .*(cannot match|more than 1% from)"):
        _load(tmp_path, text)


@pytest.mark.parametrize("raw, safe", [("vdvae_g01_s0", "vdvae_g01_s0"),
                                       ("../../etc/passwd", "etc-passwd"),
                                       ("a/b", "a-b"), ("..", "cell"), ("x..y", "x.y")])
def test_safe_name_stays_one_path_component(raw, safe):
    assert safe_name(raw) == safe
    assert "/" not in safe_name(raw) and ".." not in safe_name(raw)


def test_activation_checkpointing_on_a_family_that_cannot_is_refused_at_its_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("""\
data: {dataset: mnist}
models:
  pixelcnn:
    family: pixelcnn
    preset: tiny
    train: {activation_checkpointing: true}
""")
    with pytest.raises(UserError) as error:
        load_experiment(path)
    message = str(error.value)
    assert message.startswith(f"{path}:6: 'train.activation_checkpointing' is on for model "
                              "'pixelcnn', but family 'pixelcnn' cannot")
