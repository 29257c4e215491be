"""The strict experiment loader: every user mistake is one line naming file:line, the dotted key
and what to do (golden messages in tests/golden/loader_*.txt; regenerate them with
UPDATE_GOLDEN=1 after a deliberate wording change)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.experiment.load import load_experiment

GOLDEN = Path(__file__).parent / "golden"

BASE = """\
name: t
data:
  dataset: fashion_mnist
models:
  vdvae:
    family: vdvae
    preset: fmnist_tiny
    sweep:
      grid: {effective_depth: [1, 5]}
  pixelcnn:
    family: pixelcnn
    preset: cpu_mnist
    match: {params_of: vdvae, tolerance: 0.2}
train:
  max_steps: 3
  warmup_steps: 1
eval:
  iw_k: 2
codecs: [png]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def _message(tmp_path: Path, text: str, overrides=()) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_experiment(path, overrides=list(overrides))
    return str(caught.value).replace(str(path), "x.yaml")


CASES = {
    # name: (text, overrides)
    "unknown_key": (BASE.replace("  warmup_steps: 1", "  warmup: 1"), ()),
    "unknown_top_level": (BASE + "runer:\n  jobs: 2\n", ()),
    "wrong_type": (BASE.replace("max_steps: 3", "max_steps: many"), ()),
    "wrong_type_list": (BASE.replace("codecs: [png]", "codecs: png"), ()),
    "unknown_codec": (BASE.replace("codecs: [png]", "codecs: [png, jpeg]"), ()),
    "unknown_family": (BASE.replace("family: pixelcnn", "family: pixelcn"), ()),
    "unknown_preset": (BASE.replace("preset: fmnist_tiny", "preset: fmnist_tiyn"), ()),
    "unknown_dataset": (BASE.replace("dataset: fashion_mnist", "dataset: fashon_mnist"), ()),
    "unknown_model_field": (BASE.replace("    preset: fmnist_tiny\n",
                                         "    preset: fmnist_tiny\n    config: {zdims: 8}\n"), ()),
    "model_field_invalid": (BASE.replace("    preset: fmnist_tiny\n",
                                         "    preset: fmnist_tiny\n    config: {zdim: 0}\n"), ()),
    "sweep_value_invalid": (BASE.replace("[1, 5]", "[1, 9]"), ()),
    "unknown_sweep_key": (BASE.replace("{effective_depth: [1, 5]}", "{effective_dept: [1, 5]}"),
                          ()),
    "match_both": (BASE.replace("{params_of: vdvae, tolerance: 0.2}",
                                "{params_of: vdvae, params: 1000}"), ()),
    "match_unknown_model": (BASE.replace("params_of: vdvae", "params_of: vdave"), ()),
    "match_and_set": (BASE.replace("    preset: cpu_mnist\n",
                                   "    preset: cpu_mnist\n    config: {channels: 30}\n"), ()),
    "codecs_without_data": (BASE.replace("data:\n  dataset: fashion_mnist\n", "")
                            .replace("    family: vdvae\n", "    family: vdvae\n    kind: speed\n")
                            .replace("    family: pixelcnn\n", "    family: pixelcnn\n    kind: speed\n")
                            + "sampling_speed: {}\n", ()),
    "duplicate_key": (BASE + "train:\n  max_steps: 4\n", ()),
    "bad_yaml": (BASE + "eval: [\n", ()),
    "train_post_init": (BASE.replace("max_steps: 3", "max_steps: -3"), ()),
    "set_unknown_key": (BASE, ("train.max_step=5",)),
    "set_unknown_model": (BASE, ("models.vdave.config.zdim=4",)),
    "set_wrong_type": (BASE, ("train.max_steps=lots",)),
    "set_malformed": (BASE, ("train.max_steps",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_error_matches_golden(tmp_path, case):
    text, overrides = CASES[case]
    message = _message(tmp_path, text, overrides)
    assert "\n" not in message
    golden = GOLDEN / f"loader_{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(message + "\n")
    assert message == golden.read_text().rstrip("\n")


def test_unknown_key_names_file_line_dotted_key_and_suggestion(tmp_path):
    message = _message(tmp_path, CASES["unknown_key"][0])
    assert message == ("x.yaml:16: unknown key 'train.warmup' — did you mean "
                       "'train.warmup_steps'?")


def test_valid_file_loads_with_name_and_cells(tmp_path):
    experiment = load_experiment(_write(tmp_path, BASE))
    assert experiment.name == "t"
    assert [c.name for c in experiment.cells] == ["vdvae_g01_s0", "vdvae_g05_s0", "pixelcnn_s0",
                                                  "codec_png"]


def test_set_values_are_yaml_scalars_and_win(tmp_path):
    experiment = load_experiment(_write(tmp_path, BASE),
                                 overrides=["train.lr=1e-3", "train.max_steps=7",
                                            "eval.weights=[raw]", "runner.report=false"])
    assert experiment.train.lr == 1e-3 and experiment.train.max_steps == 7
    assert experiment.eval.weights == ("raw",)
    assert experiment.runner.report is False
    assert experiment.overrides == ("train.lr=1e-3", "train.max_steps=7", "eval.weights=[raw]",
                                    "runner.report=false")


def test_float_written_without_exponent_sign_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads `2.0e9` as a string; numeric fields accept it anyway.
    text = BASE + "runner: {estimate: flops, flops_per_s: 2.0e9}\n"
    assert load_experiment(_write(tmp_path, text)).runner.flops_per_s == 2.0e9


def test_smoke_switch_applies_smoke_overrides_and_renames(tmp_path):
    text = BASE + textwrap.dedent("""\
        smoke_overrides:
          train.max_steps: 1
          data.test_images: 8
        """)
    path = _write(tmp_path, text)
    normal = load_experiment(path)
    smoke = load_experiment(path, overrides=["smoke=true"])
    assert normal.train.max_steps == 3 and normal.data.test_images is None
    assert smoke.smoke and smoke.name == "t_smoke"
    assert smoke.train.max_steps == 1 and smoke.data.test_images == 8
    # An explicit --set still beats the smoke overrides.
    assert load_experiment(path, ["smoke=true", "train.max_steps=2"]).train.max_steps == 2


def test_smoke_override_with_unknown_key_is_reported(tmp_path):
    text = BASE + "smoke_overrides:\n  train.max_stepz: 1\n"
    message = _message(tmp_path, text, ["smoke=true"])
    assert message.startswith("x.yaml:21 (smoke_overrides): unknown key 'train.max_stepz'")
    assert "did you mean 'train.max_steps'?" in message


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_cli_validate_exit_codes(tmp_path, capsys):
    from harness.cli import main

    good = _write(tmp_path, BASE)
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok (t)"
    good.write_text(CASES["unknown_key"][0])
    assert main(["validate", str(good)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and "Traceback" not in err
