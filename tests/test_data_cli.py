"""`harness datasets` (the table) and the real Fashion-MNIST when the Debian package is here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from data_fixtures import data_root, write_idx_dataset  # noqa: F401

from harness.cli import main
from harness.data import checksum, dataset_names, idx, load_dataset, paths

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _table(capsys, root: Path | None) -> dict[str, str]:
    """Rows of `harness datasets` by dataset name (root None: $HARNESS_DATA, no --data-dir)."""
    assert main(["datasets"] + (["--data-dir", str(root)] if root else [])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["dataset", "status"]
    return {line.split()[0]: line for line in lines[2:] if line and line.split()[0] in
            dataset_names()}


def test_table_lists_every_dataset_with_sizes_and_checksums(data_root, capsys, monkeypatch):
    contents = write_idx_dataset(data_root / "fashion_mnist", 5010, 12)
    monkeypatch.setattr(idx, "FASHION_MNIST_SHA256",
                        {stem: hashlib.sha256(data).hexdigest() for stem, data in contents.items()})
    write_idx_dataset(data_root / "mnist", 5010, 12)
    rows = _table(capsys, data_root)
    assert sorted(rows) == dataset_names()
    assert rows["fashion_mnist"].split()[1:8] == ["found", "10", "/", "5,000", "/", "12",
                                                  "verified"]
    assert "recorded (no reference)" in rows["mnist"]
    assert rows["cifar10"].split()[1] == "missing"
    assert str(data_root / "cifar10") in rows["cifar10"]  # how to get it, in this data dir
    assert "NO" in rows["imagenet32_downsampled"].split()  # never comparable


def test_table_does_not_decode_images_and_caches_checksums(data_root, capsys, monkeypatch):
    write_idx_dataset(data_root / "mnist", 5010, 12)

    def refuse(*args):
        raise AssertionError("the table must not decode a dataset")

    monkeypatch.setattr(idx, "parse_idx_images", refuse)
    assert "found" in _table(capsys, None)["mnist"]  # found through $HARNESS_DATA
    cache = json.loads((data_root / checksum.CACHE_NAME).read_text())
    file = str((data_root / "mnist" / "train-images-idx3-ubyte.gz").resolve())
    assert cache[file]["sha256-gunzip"]

    # A second listing reads the cached digest instead of decompressing again.
    monkeypatch.setattr(checksum, "open_gzip", refuse)
    _table(capsys, data_root)


def test_table_shows_a_mismatch_and_a_corrupt_file(data_root, capsys):
    write_idx_dataset(data_root / "fashion_mnist", 5010, 12)  # not the real checksums
    write_idx_dataset(data_root / "mnist", 5010, 12)
    train = data_root / "mnist" / "train-images-idx3-ubyte.gz"
    train.write_bytes(train.read_bytes()[:30])
    rows = _table(capsys, data_root)
    assert "MISMATCH: train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz" in rows[
        "fashion_mnist"]
    assert "ERROR:" in rows["mnist"] and "train-images-idx3-ubyte.gz" in rows["mnist"]


@pytest.fixture
def real_fashion_mnist(tmp_path, monkeypatch):
    if not all((DEBIAN_FASHION_MNIST / f"{stem}.gz").is_file() for stem in idx.IMAGE_FILES.values()):
        pytest.skip(f"{DEBIAN_FASHION_MNIST} not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "harness-data"))
    monkeypatch.setenv("HARNESS_DOWNLOAD", "0")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {"fashion_mnist": (DEBIAN_FASHION_MNIST,)})
    return tmp_path / "harness-data"


def test_real_fashion_mnist(real_fashion_mnist, capsys):
    splits = load_dataset("fashion_mnist")
    assert splits.split_sizes == {"train": 55000, "validation": 5000, "test": 10000}
    assert splits.image_shape == (1, 28, 28) and splits.n_bits == 8
    assert all(s.dtype == torch.uint8 for s in (splits.train, splits.validation, splits.test))
    record = splits.provenance
    assert record["checksums_verified"] is True and record["comparable_to_published"] is True
    assert record["files"]["train-images-idx3-ubyte"] == idx.FASHION_MNIST_SHA256[
        "train-images-idx3-ubyte"]
    assert record["split_sizes"] == splits.split_sizes and record["split_seed"] == 0
    # Train and validation partition the 60,000 official training images.
    both = torch.cat([splits.train, splits.validation]).reshape(60000, -1).numpy()
    assert len({row.tobytes() for row in both}) > 59900  # (the set has a few exact duplicates)

    rows = _table(capsys, real_fashion_mnist)
    assert rows["fashion_mnist"].split()[1:8] == ["found", "55,000", "/", "5,000", "/",
                                                  "10,000", "verified"]
    assert str(DEBIAN_FASHION_MNIST) in rows["fashion_mnist"]
