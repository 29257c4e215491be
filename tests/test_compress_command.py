"""`harness compress` / `harness decompress`: files from cells and weights files, images from a
folder, an array or a dataset split, PNGs back with their names, and one line (exit 2) for
every bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from harness import cli
from harness.engine.lossless import container
from harness.engine.schedule import EMA
from models import coding, registry

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
TINY_PIXELCNN = {"family": "pixelcnn", "preset": "tiny"}  # 8×8 RGB


@pytest.fixture
def bits_back_vdvae(monkeypatch):
    """The VDVAE family with the bits-back capability, as models/vdvae.py will declare it."""
    family = registry.get("vdvae")
    if not family.can(coding.TOP_DOWN_LATENTS):
        monkeypatch.setitem(registry.FAMILIES, "vdvae", dataclasses.replace(
            family, capabilities=family.capabilities | {coding.TOP_DOWN_LATENTS}))


def run(argv, capsys) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def user_error(argv, capsys) -> str:
    status, _, err = run(argv, capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    return lines[0]


@pytest.fixture
def pixelcnn_files(tmp_path):
    family = registry.get("pixelcnn")
    torch.manual_seed(0)
    model = family.build_model(family.build_config("tiny"))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(TINY_PIXELCNN))
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8).numpy()
    np.save(tmp_path / "images.npy", images)
    return tmp_path, images


def read_pngs(folder: Path, names: list[str]) -> np.ndarray:
    arrays = [np.asarray(Image.open(folder / name)) for name in names]
    return np.stack([a.transpose(2, 0, 1) if a.ndim == 3 else a[None] for a in arrays])


def test_weights_file_round_trip_through_the_commands(pixelcnn_files, capsys):
    folder, images = pixelcnn_files
    status, out, _ = run(["compress", folder / "weights.pt", folder / "images.npy",
                          folder / "x.hlc", "--model", folder / "model.yaml",
                          "--batch-size", 2], capsys)
    assert status == 0
    assert "compressed 5 images" in out and "bits/dim marginal" in out and "bound" in out
    # no --model: the header's record of the family and config builds the model
    status, out, _ = run(["decompress", folder / "weights.pt", folder / "x.hlc",
                          folder / "out"], capsys)
    assert status == 0 and "decompressed 5 images" in out and " s (" in out
    names = [f"{i:06d}.png" for i in range(5)]
    assert sorted(p.name for p in (folder / "out").iterdir()) == names
    assert np.array_equal(read_pngs(folder / "out", names), images)


def test_folder_names_are_kept(tmp_path, capsys):
    family = registry.get("pixelcnn")
    model = family.build_model(family.build_config("cpu_mnist"))  # 28×28 grey
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    source = tmp_path / "pictures"
    (source / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    originals = {}
    for name in ("b.png", "a.png", "sub/c.png"):
        array = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(array, mode="L").save(source / name)
        originals[name] = array
    assert run(["compress", tmp_path / "weights.pt", source, tmp_path / "x.hlc", "--model",
                "pixelcnn:cpu_mnist"], capsys)[0] == 0
    assert run(["decompress", tmp_path / "weights.pt", tmp_path / "x.hlc", tmp_path / "out",
                "--model", "pixelcnn:cpu_mnist"], capsys)[0] == 0
    for name, array in originals.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), array)


def test_dataset_split_images_get_zero_padded_indices(tmp_path, capsys):
    if not FASHION_MNIST.is_file():
        pytest.skip(f"{FASHION_MNIST} not installed (apt-get install dataset-fashion-mnist)")
    family = registry.get("pixelcnn")
    model = family.build_model(family.build_config("cpu_mnist"))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    status, out, _ = run(["compress", tmp_path / "weights.pt", "fashion_mnist:test:3",
                          tmp_path / "x.hlc", "--model", "pixelcnn:cpu_mnist"], capsys)
    assert status == 0, out
    assert run(["decompress", tmp_path / "weights.pt", tmp_path / "x.hlc", tmp_path / "out",
                "--model", "pixelcnn:cpu_mnist"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["000000.png", "000001.png", "000002.png"]


def make_cell(root: Path, state_path: Path | None, max_steps: int) -> Path:
    """A results folder with one VDVAE train cell (fmnist_tiny), as the runner leaves it."""
    family = registry.get("vdvae")
    config = family.build_config("fmnist_tiny")
    cell = root / "cells" / "vdvae_s0"
    (cell / "checkpoints").mkdir(parents=True)
    record = {"name": "vdvae_s0", "kind": "train", "family": "vdvae",
              "model_config": dataclasses.asdict(config), "train": {"max_steps": max_steps},
              "checkpoint": str(state_path) if state_path else None}
    (cell / "config.json").write_text(json.dumps(record))
    provenance = {"checkpoint": {"path": str(state_path)} if state_path else None}
    (cell / "provenance.json").write_text(json.dumps(provenance))
    return cell


def test_cell_uses_the_weights_its_summary_uses(tmp_path, capsys, bits_back_vdvae):
    family = registry.get("vdvae")
    torch.manual_seed(0)
    model = family.build_model(family.build_config("fmnist_tiny"))
    ema = EMA(model, 0.5)
    for step in range(2):  # after two different weights the average is neither of them
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (step + 1))
        ema.update()
    cell = make_cell(tmp_path, None, max_steps=3)
    torch.save({"step": 3, "model": model.state_dict(), "ema": ema.state_dict()},
               cell / "checkpoints" / "step-3.pt")
    with (tmp_path / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["cell", "weights"])
        writer.writeheader()
        writer.writerow({"cell": "vdvae_s0", "weights": "ema"})
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8).numpy()
    np.save(tmp_path / "images.npy", images)
    status, out, _ = run(["compress", cell, tmp_path / "images.npy", tmp_path / "x.hlc"], capsys)
    assert status == 0 and "initial bits" in out, out
    header, _ = container.unpack((tmp_path / "x.hlc").read_bytes(), "x")
    assert header["model_sha256"] == container.model_sha256(ema.module())
    assert header["model"]["source"] == "cell vdvae_s0 (ema weights, step 3)"
    assert run(["decompress", cell, tmp_path / "x.hlc", tmp_path / "out"], capsys)[0] == 0
    assert np.array_equal(read_pngs(tmp_path / "out", [f"{i:06d}.png" for i in range(3)]), images)
    # the raw weights of the same checkpoint are another model
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    message = user_error(["decompress", tmp_path / "raw.pt", tmp_path / "x.hlc",
                          tmp_path / "again"], capsys)
    assert "compressed with model sha256" in message


def test_evaluate_only_cell_uses_the_weights_file_its_provenance_names(tmp_path, capsys,
                                                                       bits_back_vdvae):
    family = registry.get("vdvae")
    model = family.build_model(family.build_config("fmnist_tiny"))
    torch.save(model.state_dict(), tmp_path / "reference.th")
    cell = make_cell(tmp_path, tmp_path / "reference.th", max_steps=0)
    np.save(tmp_path / "images.npy", torch.randint(0, 256, (2, 1, 28, 28),
                                                   dtype=torch.uint8).numpy())
    assert run(["compress", cell, tmp_path / "images.npy", tmp_path / "x.hlc"], capsys)[0] == 0
    # the cell and its weights file are the same model: either decodes the file
    status, out, _ = run(["decompress", tmp_path / "reference.th", tmp_path / "x.hlc",
                          tmp_path / "out", "--model", "vdvae:fmnist_tiny"], capsys)
    assert status == 0, out


def test_bad_inputs_are_one_line(pixelcnn_files, tmp_path, capsys):
    folder, _ = pixelcnn_files
    weights, images, model = folder / "weights.pt", folder / "images.npy", folder / "model.yaml"
    assert "no such results cell folder or weights file" in user_error(
        ["compress", folder / "nope.pt", images, folder / "x.hlc", "--model", model], capsys)
    assert "needs --model" in user_error(["compress", weights, images, folder / "x.hlc"], capsys)
    np.save(folder / "grey.npy", np.zeros((2, 1, 28, 28), dtype=np.uint8))
    assert "images of shape [1, 28, 28]" in user_error(
        ["compress", weights, folder / "grey.npy", folder / "x.hlc", "--model", model], capsys)
    assert "--batch-size 0" in user_error(["compress", weights, images, folder / "x.hlc",
                                           "--model", model, "--batch-size", 0], capsys)
    assert "not a results cell folder" in user_error(
        ["compress", tmp_path, images, folder / "x.hlc"], capsys)
    (folder / "garbage.hlc").write_bytes(b"hello")
    assert "wrong magic" in user_error(["decompress", weights, folder / "garbage.hlc",
                                        folder / "out", "--model", model], capsys)
    assert run(["compress", weights, images, folder / "x.hlc", "--model", model], capsys)[0] == 0
    data = (folder / "x.hlc").read_bytes()
    (folder / "cut.hlc").write_bytes(data[:len(data) // 2])
    assert "truncated" in user_error(["decompress", weights, folder / "cut.hlc",
                                      folder / "out"], capsys)
    other = registry.get("pixelcnn").build_model(registry.get("pixelcnn").build_config("tiny"))
    torch.save(other.state_dict(), folder / "other.pt")
    assert "compressed with model sha256" in user_error(
        ["decompress", folder / "other.pt", folder / "x.hlc", folder / "out"], capsys)
    assert not (folder / "out").exists()


def test_a_name_that_leaves_the_output_folder_is_refused(pixelcnn_files, capsys):
    folder, _ = pixelcnn_files
    assert run(["compress", folder / "weights.pt", folder / "images.npy", folder / "x.hlc",
                "--model", folder / "model.yaml"], capsys)[0] == 0
    header, segments = container.unpack((folder / "x.hlc").read_bytes(), "x")
    header["names"][1] = "../escaped"
    del header["segment_bytes"]
    (folder / "evil.hlc").write_bytes(container.pack(header, segments))
    message = user_error(["decompress", folder / "weights.pt", folder / "evil.hlc",
                          folder / "out"], capsys)
    assert "outside" in message and not (folder / "escaped.png").exists()
