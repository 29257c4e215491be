"""MNIST and Fashion-MNIST from IDX files (`*-ubyte.gz` or plain).

Splits (the openai/vdvae reference's): validation = last 5,000 of `np.random.seed(split_seed);
np.random.permutation(60000)`, train = the other 55,000 in that permuted order, test = the
official 10,000 in file order. Default `split_seed` is 0 (recorded in provenance).

Only the image files are read; labels play no part in density modelling. Checksums are taken of the
decompressed IDX bytes: Fashion-MNIST's are verified against `FASHION_MNIST_SHA256` (Debian re-gzips
the files, so the .gz bytes differ from upstream). For MNIST no decompressed checksum is known here;
a `.gz` is verified when its md5 equals the canonical archive's, otherwise the checksum is recorded
but unverified, and provenance says so.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from harness.data import download as dl
from harness.data.checksum import DigestCache, digest_file, read_maybe_gzip, sha256_bytes
from harness.data.paths import data_dirs, describe_dirs, download_dir, hint, primary_root
from harness.data.registry import (DatasetStatus, check_int, default_split_sizes, make_splits,
                                   register_dataset)
from harness.data.splits import split_last
from harness.errors import UserError

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
DEFAULT_SPLIT_SEED = 0
VALIDATION_SIZE = 5000

# Decompressed sha256 of the official Fashion-MNIST files. Tests replace these tables to load
# their own fixtures.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
}
# md5 of the canonical MNIST .gz archives (as published with the files and used by torchvision).
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
}
URLS = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    # yann.lecun.com refuses automated downloads; this mirror serves byte-identical archives.
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
HOW_TO_GET = {
    "fashion_mnist": "apt-get install dataset-fashion-mnist, or put train-images-idx3-ubyte.gz "
                     "and t10k-images-idx3-ubyte.gz in {root}/fashion_mnist "
                     "(downloaded automatically when online)",
    "mnist": "put train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz in "
             "{root}/mnist (downloaded automatically when online)",
}
VERSIONS = {
    "fashion_mnist": "Fashion-MNIST (Xiao et al. 2017), IDX",
    "mnist": "MNIST (LeCun et al. 1998), IDX",
}


def parse_idx_images(data: bytes, file: Path) -> np.ndarray:
    """IDX3 unsigned-byte images -> `(N, H, W)` uint8, checking magic and length."""
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise UserError(f"{file}: not an IDX image file (magic {data[:4].hex() or 'missing'}, "
                        "expected 00000803); replace it with the original file")
    dims = struct.unpack(">3I", data[4:16])
    expected = 16 + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(f"{file}: IDX header says {dims[0]}x{dims[1]}x{dims[2]} images "
                        f"({expected} bytes) but it holds {len(data)} bytes; the file is "
                        "truncated or corrupt, replace it")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(dims)  # (N, H, W)


def read_idx_dims(file: Path) -> tuple[int, int, int]:
    """(N, H, W) from the 16-byte header only (decompressing just that much of a .gz)."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as handle:
            header = handle.read(16)
    except (OSError, EOFError) as error:
        raise UserError(f"{file}: cannot read IDX header ({error}); replace the file") from None
    if len(header) < 16 or header[:4] != b"\x00\x00\x08\x03":
        raise UserError(f"{file}: not an IDX image file; replace it with the original file")
    return struct.unpack(">3I", header[4:16])


def _pick(directory: Path, stem: str) -> Path | None:
    """The plain file if present (faster), else the .gz."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(name: str, data_dir: Path | None) -> tuple[Path, dict[str, Path]] | None:
    for directory in data_dirs(name, data_dir):
        files = {split: _pick(directory, stem) for split, stem in IMAGE_FILES.items()}
        if all(files.values()):
            return directory, files  # type: ignore[return-value]
    return None


def _download(name: str, data_dir: Path | None, url: str | None) -> tuple[Path, dict[str, Path]]:
    base = dl.base_url(name, url, URLS[name])
    target = download_dir(name, data_dir)
    files = {}
    for split, stem in IMAGE_FILES.items():
        remote = dl.RemoteFile(
            f"{stem}.gz",
            md5=MNIST_GZ_MD5.get(f"{stem}.gz") if name == "mnist" else None,
            sha256_gunzip=FASHION_MNIST_SHA256.get(stem) if name == "fashion_mnist" else None)
        existing = target / remote.name
        files[split] = existing if existing.is_file() else dl.download_file(
            base, remote, target, how_to_get=hint(HOW_TO_GET[name], data_dir))
    return target, files


def _verify(name: str, file: Path, sha256: str, cache: DigestCache) -> tuple[bool | None, str]:
    """(verified, note): True = matches the reference, False = mismatch, None = no reference."""
    stem = file.name.removesuffix(".gz")
    if name == "fashion_mnist":
        expected = FASHION_MNIST_SHA256.get(stem)
        if expected is None:
            return None, "no reference checksum"
        return sha256 == expected, f"sha256 of decompressed {stem}"
    expected_md5 = MNIST_GZ_MD5.get(file.name)
    if file.suffix == ".gz" and expected_md5:
        md5 = digest_file(file, ("md5",), cache)["md5"]
        return (True, "md5 of the canonical .gz") if md5 == expected_md5 else (
            None, "the .gz is not the canonical archive (re-compressed?); checksum recorded, "
                  "not verified")
    return None, "no reference checksum for decompressed MNIST; recorded, not verified"


def _load(name: str, data_dir: Path | None, *, split_seed: int, validation_size: int,
          download: bool, download_url: str | None, verify_checksums: bool):
    check_int(name, "split_seed", split_seed)
    check_int(name, "validation_size", validation_size)
    how = hint(HOW_TO_GET[name], data_dir)
    found = find_files(name, data_dir)
    if found is None:
        if not (download and dl.downloads_enabled()):
            raise UserError(f"dataset '{name}': image files not found in "
                            f"{describe_dirs(data_dirs(name, data_dir))}; {how}")
        found = _download(name, data_dir, download_url)
    directory, files = found
    cache = DigestCache(primary_root(data_dir))
    images, checksums, verified, notes = {}, {}, [], []
    for split, file in files.items():
        data = read_maybe_gzip(file)
        images[split] = parse_idx_images(data, file)  # (N, H, W)
        checksums[IMAGE_FILES[split]] = sha256 = sha256_bytes(data)
        cache.put(file, "sha256-gunzip" if file.suffix == ".gz" else "sha256", sha256)
        ok, note = _verify(name, file, sha256, cache)
        if ok is False and verify_checksums:
            raise UserError(f"{file}: checksum mismatch ({note} is {sha256}); the file is corrupt "
                            f"or another version. Delete it and {how}, or pass "
                            "verify_checksums=False to use it anyway (not comparable)")
        verified.append(ok)
        notes.append(f"{file.name}: {note}" + (" MISMATCH" if ok is False else ""))
    cache.save()

    n_train = len(images["train"])
    keep, held_out = split_last(n_train, split_seed, validation_size, what=f"dataset '{name}'")
    train_images = images["train"][:, None]  # (N, 1, H, W)
    standard = (n_train == 60000 and len(images["test"]) == 10000
                and images["train"].shape[1:] == (28, 28) and validation_size == VALIDATION_SIZE)
    return make_splits(
        name,
        train=torch.from_numpy(train_images[keep]),
        validation=torch.from_numpy(train_images[held_out]),
        test=torch.from_numpy(images["test"][:, None].copy()),
        version=VERSIONS[name],
        comparable=standard and False not in verified,
        files=checksums,
        checksums_verified=all(ok is True for ok in verified),
        checksum_note="; ".join(notes),
        split_seed=split_seed,
        source=directory,
        split_rule="validation = x[perm[-validation_size:]], train = x[perm[:-validation_size]], "
                   "perm = RandomState(split_seed).permutation(n_train); test = official t10k",
    )


def _status(name: str, data_dir: Path | None) -> DatasetStatus:
    how = hint(HOW_TO_GET[name], data_dir)
    found = find_files(name, data_dir)
    if found is None:
        return DatasetStatus(name, None, how, None, "-", True)
    directory, files = found
    cache = DigestCache(primary_root(data_dir))
    try:
        n_train = read_idx_dims(files["train"])[0]
        n_test = read_idx_dims(files["test"])[0]
        states = []
        for file in files.values():
            kind = "sha256-gunzip" if file.suffix == ".gz" else "sha256"
            sha256 = digest_file(file, (kind,), cache)[kind]
            ok, _ = _verify(name, file, sha256, cache)
            states.append((file, ok))
    except UserError as error:
        return DatasetStatus(name, directory, how, None, f"ERROR: {error}", False)
    finally:
        cache.save()
    mismatched = [file.name for file, ok in states if ok is False]
    if mismatched:
        checksums = "MISMATCH: " + ", ".join(mismatched)
    elif all(ok is True for _, ok in states):
        checksums = "verified"
    else:
        checksums = "recorded (no reference)"
    sizes = default_split_sizes(n_train, VALIDATION_SIZE, n_test)
    return DatasetStatus(name, directory, how, sizes, checksums, not mismatched,
                         note=f"split seed {DEFAULT_SPLIT_SEED}")


@register_dataset("mnist", status=lambda data_dir: _status("mnist", data_dir),
                  description="MNIST digits, 28x28 grey")
def load_mnist(data_dir: Path | None, *, split_seed: int = DEFAULT_SPLIT_SEED,
               validation_size: int = VALIDATION_SIZE, download: bool = True,
               download_url: str | None = None, verify_checksums: bool = True):
    return _load("mnist", data_dir, split_seed=split_seed, validation_size=validation_size,
                 download=download, download_url=download_url,
                 verify_checksums=verify_checksums)


@register_dataset("fashion_mnist", status=lambda data_dir: _status("fashion_mnist", data_dir),
                  description="Fashion-MNIST clothing, 28x28 grey")
def load_fashion_mnist(data_dir: Path | None, *, split_seed: int = DEFAULT_SPLIT_SEED,
                       validation_size: int = VALIDATION_SIZE, download: bool = True,
                       download_url: str | None = None, verify_checksums: bool = True):
    return _load("fashion_mnist", data_dir, split_seed=split_seed,
                 validation_size=validation_size, download=download, download_url=download_url,
                 verify_checksums=verify_checksums)
