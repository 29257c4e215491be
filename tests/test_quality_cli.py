"""`harness quality`: the table, `--json`'s keys, and one line with exit status 2 for each bad
input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import data_root, write_idx_dataset  # noqa: F401
from PIL import Image
from test_quality_metrics import RANDOM_CNN_SHA256, blobs

from harness.cli import main
from harness.engine.quality_metrics import QUALITY_KEYS


def _npy(path, images):
    np.save(path, images)
    return str(path)


def _folder(path, images):
    path.mkdir()
    for i, image in enumerate(images):  # (C, H, W)
        mode = "L" if image.shape[0] == 1 else "RGB"
        pixels = image[0] if mode == "L" else image.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels), mode=mode).save(path / f"{i:03d}.png")
    return str(path)


@pytest.fixture
def sets(tmp_path):
    return {"samples": _npy(tmp_path / "samples.npy", blobs(40, seed=1)),
            "reference": _npy(tmp_path / "reference.npy", blobs(50, seed=2)),
            "train": _npy(tmp_path / "train.npy", blobs(200, seed=3))}


def test_table_and_json(sets, tmp_path, capsys):
    out = tmp_path / "out" / "quality.json"
    assert main(["quality", sets["samples"], sets["reference"], "--train", sets["train"],
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for line in ("samples    " + sets["samples"], "features   random_cnn  sha256 "
                 + RANDOM_CNN_SHA256, "fd  ", "kid_mean ± kid_std", "precision (k=3)",
                 "coverage (k=5)", "memorized_fraction_pixels", "n_samples                   40"):
        assert line in table, line
    row = json.loads(out.read_text())
    assert sorted(row) == sorted(QUALITY_KEYS)
    assert row["n_samples"] == 40 and row["n_reference"] == 50
    assert row["features"] == {"name": "random_cnn", "sha256": RANDOM_CNN_SHA256}
    assert 0 <= row["memorized_fraction"] <= 1 and 0 <= row["memorized_fraction_pixels"] <= 1
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_identical_sets_through_the_command(sets, tmp_path):
    out = tmp_path / "same.json"
    assert main(["quality", sets["reference"], sets["reference"], "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert abs(row["fd"]) < 1e-4 and row["precision"] == row["recall"] == 1.0
    assert row["memorized_fraction"] is None and row["memorized_fraction_pixels"] is None


def test_n_takes_the_first_n_of_both(sets, tmp_path):
    out = tmp_path / "n.json"
    assert main(["quality", sets["samples"], sets["reference"], "--n", "30",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["n_samples"] == row["n_reference"] == 30


def test_dataset_splits_as_sources(data_root, tmp_path):
    write_idx_dataset(data_root / "mnist", 5040, 30)
    out = tmp_path / "split.json"
    assert main(["quality", "mnist:test:20", "mnist:test", "--train", "mnist:validation:100",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["n_samples"] == 20 and row["n_reference"] == 30


def test_grey_saved_as_rgb_is_read_as_grey_and_colour_is_refused(sets, tmp_path, capsys):
    grey = blobs(20, seed=4)
    rgb_folder = _folder(tmp_path / "grey_rgb", np.repeat(grey, 3, axis=1))
    out = tmp_path / "grey.json"
    assert main(["quality", rgb_folder, _npy(tmp_path / "grey.npy", grey), "--json",
                 str(out)]) == 0
    assert "grey RGB read as 1 channel" in capsys.readouterr().out
    assert abs(json.loads(out.read_text())["fd"]) < 1e-4  # the same images: FD 0 up to rounding

    colour = _folder(tmp_path / "colour", blobs(20, seed=5, channels=3))
    assert main(["quality", colour, sets["reference"]]) == 2
    assert "images are 3x16x16 (CxHxW) but REFERENCE" in capsys.readouterr().err


@pytest.mark.parametrize("case, words", [
    ("empty_folder", ["empty: no .png/.jpg/.jpeg files"]),
    ("mixed_shapes", ["b.png: image is 12x12 (WxH) but", "must have one size"]),
    ("other_shape", ["SAMPLES", "images are 1x12x12 (CxHxW) but REFERENCE", "1x16x16"]),
    ("train_shape", ["--train", "images are 1x12x12 (CxHxW) but REFERENCE"]),
    ("unknown_extractor", ["unknown feature extractor 'vgg'", "Valid: inception, random_cnn"]),
    ("no_weights", ["needs its weights file", "--inception-weights"]),
    ("missing_weights", ["missing.pth: no such weights file", "pytorch-fid/releases"]),
    ("n_too_large", ["--n 41: SAMPLES", "has only 40 images", "--n 40 or fewer"]),
    ("n_too_small", ["--n 3: sample-quality metrics need at least 10"]),
    ("missing_npy", ["gone.npy: no such file"]),
    ("float_npy", ["holds float64", "expected uint8 (N, C, H, W)"]),
])
def test_bad_input_is_one_line_and_exit_2(case, words, sets, tmp_path, capsys):
    samples, reference = sets["samples"], sets["reference"]
    extra: list[str] = []
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        samples = str(tmp_path / "empty")
    elif case == "mixed_shapes":
        folder = tmp_path / "mixed"
        folder.mkdir()
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "a.png")
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(folder / "b.png")
        samples = str(folder)
    elif case == "other_shape":
        samples = _npy(tmp_path / "small.npy", blobs(20, seed=6, size=12))
    elif case == "train_shape":
        extra = ["--train", _npy(tmp_path / "small.npy", blobs(20, seed=6, size=12))]
    elif case == "unknown_extractor":
        extra = ["--features", "vgg"]
    elif case == "no_weights":
        extra = ["--features", "inception"]
    elif case == "missing_weights":
        extra = ["--features", "inception", "--inception-weights", str(tmp_path / "missing.pth")]
    elif case == "n_too_large":
        extra = ["--n", "41"]
    elif case == "n_too_small":
        extra = ["--n", "3"]
    elif case == "missing_npy":
        samples = str(tmp_path / "gone.npy")
    elif case == "float_npy":
        samples = _npy(tmp_path / "float.npy", blobs(20, seed=7).astype(np.float64))
    out = tmp_path / "never.json"
    assert main(["quality", samples, reference, "--json", str(out), *extra]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith("harness: error: ") and "\n" not in error
    assert "Traceback" not in captured.err
    for word in words:
        assert word in error, error
    assert not out.exists()
