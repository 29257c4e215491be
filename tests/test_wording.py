"""Messages a newcomer meets: each says the right thing in the user's own terms, once, and points
at something that works."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"
WEIGHTS = REPO / "examples" / "vdvae_tiny_cifar" / "vdvae_tiny_cifar-model-ema.th"


def harness(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def one_line(code: int, err: str) -> str:
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_a_set_without_a_value_suggests_a_key_that_exists():
    err = one_line(*harness("validate", str(SMOKE), "--set", "nokey")[::2])
    example = re.search(r"e\.g\. --set (\S+)$", err)
    assert example, err
    code, out, err = harness("validate", str(SMOKE), "--set", example.group(1))
    assert code == 0 and out.startswith(f"{SMOKE}: ok"), err  # the example itself is valid


def test_a_bad_smoke_value_from_set_is_blamed_on_the_set():
    err = one_line(*harness("validate", str(SMOKE), "--set", "smoke=maybe")[::2])
    assert err == ("harness: error: --set smoke=maybe: 'smoke' must be true or false, got "
                   "'maybe' (str)")


def test_a_bad_smoke_value_in_the_file_is_blamed_on_its_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(SMOKE.read_text() + "smoke: maybe\n")
    err = one_line(*harness("validate", str(path))[::2])
    assert re.match(rf"harness: error: {re.escape(str(path))}:\d+: 'smoke' must be", err), err


def test_a_small_match_tolerance_is_not_written_as_zero_percent(tmp_path):
    doc = yaml.safe_load(SMOKE.read_text())
    doc["models"]["pixelcnn"]["match"]["tolerance"] = 0.0001
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(doc))
    err = one_line(*harness("validate", str(path))[::2])
    assert "more than 0.01% from the target 26,272" in err and " 0% " not in err, err


def test_an_image_folder_without_a_path_says_how_to_give_one(tmp_path):
    code, _, err = harness("evaluate", str(WEIGHTS), "--model", "cifar10_tiny", "--dataset",
                           "image_folder", "--results", str(tmp_path / "r"))
    err = one_line(code, err)
    assert err.endswith("has no folder to read: pass --set path=DIR, a folder of PNG/JPEG "
                        "images"), err
    path = tmp_path / "x.yaml"
    path.write_text("data: {dataset: image_folder}\nmodels: {m: {family: vdvae, preset: "
                    "cifar10_tiny}}\n")
    code, out, err = harness("run", str(path), "--dry-run")  # the plan notes it
    assert "has no folder to read: pass data.options.path=DIR, a folder of PNG/JPEG images" \
        in out, (out, err)


def test_an_unknown_model_lists_each_family_s_presets_once(tmp_path):
    code, _, err = harness("evaluate", str(WEIGHTS), "--model", "nonesuch", "--dataset",
                           "cifar10", "--results", str(tmp_path / "r"))
    err = one_line(code, err)
    listed = err.split("Presets of ", 1)[1]
    for family in listed.split("; "):
        name, presets = family.split(": ")
        presets = presets.split(", ")
        assert len(presets) == len(set(presets)), (name, presets)  # each once
    assert "vdvae: " in listed and "cifar10_tiny" in listed
    code, _, err = harness("evaluate", str(WEIGHTS), "--model", "nofamily:cifar10",
                           "--dataset", "cifar10", "--results", str(tmp_path / "r"))
    assert "unknown model family 'nofamily'" in one_line(code, err)


def test_weights_of_another_preset_name_it_for_the_command_line_and_the_file(tmp_path):
    code, _, err = harness("evaluate", str(WEIGHTS), "--model", "cifar10", "--dataset",
                           "image_folder", "--set", f"path={WEIGHTS.parent / 'images'}",
                           "--set", "validation_size=0", "--set", "test_size=4",
                           "--results", str(tmp_path / "r"))
    err = one_line(code, err)
    assert err.endswith("this looks like preset cifar10_tiny (harness evaluate --model "
                        "cifar10_tiny; 'preset: cifar10_tiny' in an experiment file)"), err


@pytest.mark.parametrize("given", ["FILE", "FILE/sub"])
def test_datasets_refuses_a_file_as_its_data_directory(tmp_path, given, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    code, out, err = harness("datasets", "--data-dir", given)
    assert out == "" and "data directory (--data-dir, data.data_dir)" in one_line(code, err)
    monkeypatch.setenv("HARNESS_DATA", given)
    code, out, err = harness("datasets")
    assert out == "" and "data directory ($HARNESS_DATA)" in one_line(code, err)


def test_datasets_takes_a_folder_that_does_not_exist_yet(tmp_path):
    code, out, err = harness("datasets", "--data-dir", str(tmp_path / "new"))
    assert code == 0 and "fashion_mnist" in out, err


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`harness datasets | head -1`: the reader has gone before the table is written; exit
    quietly (status 141, as a shell reports SIGPIPE), no traceback, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        writer = subprocess.run([sys.executable, "-m", "harness.cli", "datasets", "--data-dir",
                                 str(tmp_path)], stdout=write_end, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    finally:
        os.close(write_end)
    assert writer.stderr.decode() == "" and writer.returncode == 141, writer.stderr.decode()
