"""FFHQ (Karras et al. 2019) at 256x256 and 1024x1024, as the VDVAE setup uses it.

`ffhq256`: `ffhq-256.npy` (70,000 x 256 x 256 x 3 uint8, memory-mapped) or a folder of 256x256
PNGs (searched recursively, sorted relative paths). Split (the reference's): `perm =
RandomState(5).permutation(70000)`, train = `x[perm[:-7000]]`, validation = test =
`x[perm[-7000:]]` (the reference has no separate test set). Option `n_bits` (8 or 5) records the
bit depth the model quantises to (VDVAE trains FFHQ-256 at 5 bits); the pixels stay uint8 here.

`ffhq1024`: PNG folders `train/` (00000-64999) and `valid/` (65000-69999); test = valid.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.checksum import DigestCache, cached_state, digest_file, listing_digest
from harness.data.folder import list_images
from harness.data.lazy import ArraySource, FileSource, LazyImages
from harness.data.npy import npy_rows, open_npy
from harness.data.paths import data_dirs, describe_dirs, hint, primary_root
from harness.data.registry import (DatasetStatus, check_choice, check_int, default_split_sizes,
                                   make_splits, register_dataset)
from harness.data.splits import split_last
from harness.errors import UserError

SPLIT_SEED_256 = 5
VALIDATION_SIZE_256 = 7000
HOW_TO_GET_256 = ("put ffhq-256.npy (the VDVAE setup's file) or a folder of 256x256 PNGs in "
                  "{root}/ffhq256")
HOW_TO_GET_1024 = ("put the FFHQ 1024x1024 PNGs in {root}/ffhq1024/train "
                   "(00000-64999) and {root}/ffhq1024/valid (65000-69999)")


def find_ffhq256(data_dir: Path | None) -> tuple[str, Path] | None:
    """("npy", file) or ("png", folder)."""
    for directory in data_dirs("ffhq256", data_dir, ("ffhq256", "")):
        if (directory / "ffhq-256.npy").is_file():
            return "npy", directory / "ffhq-256.npy"
    for directory in data_dirs("ffhq256", data_dir):
        if directory.is_dir() and list_images(directory, recursive=True):
            return "png", directory
    return None


@register_dataset("ffhq256", status=lambda data_dir: _status_256(data_dir),
                  description="FFHQ faces 256x256 (VDVAE split)")
def load_ffhq256(data_dir: Path | None, *, split_seed: int = SPLIT_SEED_256,
                 validation_size: int = VALIDATION_SIZE_256, n_bits: int = 8):
    check_int("ffhq256", "split_seed", split_seed)
    check_int("ffhq256", "validation_size", validation_size)
    check_choice("ffhq256", "n_bits", n_bits, (8, 5))
    found = find_ffhq256(data_dir)
    if found is None:
        raise UserError("dataset 'ffhq256': not found in "
                        f"{describe_dirs(data_dirs('ffhq256', data_dir, ('ffhq256', '')))}; "
                        f"{hint(HOW_TO_GET_256, data_dir)}")
    kind, path = found
    if kind == "npy":
        how = hint(HOW_TO_GET_256, data_dir)
        array = open_npy(path, (256, 256), how_to_fix=f"replace it; {how}")
        source = ArraySource(array, "NHWC", path)
        cache = DigestCache(primary_root(data_dir))
        try:
            files = {path.name: digest_file(path, ("sha256",), cache)["sha256"]}
        finally:
            cache.save()
        note = "sha256 of the .npy file; no published reference"
    else:
        images = list_images(path, recursive=True)
        source = FileSource(images, "RGB", (256, 256))
        files = {f"{path.name}/ ({len(images)} files)": listing_digest(images, path)}
        note = "PNG folder: sha256 of the sorted (name, size) listing, contents not hashed"
    keep, held_out = split_last(source.shape[0], split_seed, validation_size,
                                what="dataset 'ffhq256'")
    held_out_images = LazyImages(source, held_out)
    standard = (source.shape[0] == 70000 and split_seed == SPLIT_SEED_256
                and validation_size == VALIDATION_SIZE_256)
    return make_splits(
        "ffhq256",
        train=LazyImages(source, keep),
        validation=held_out_images,
        test=held_out_images,
        n_bits=n_bits,
        version=f"FFHQ 256x256 (Karras et al. 2019), {kind}",
        comparable=standard,
        files=files,
        checksums_verified=False,
        checksum_note=note,
        split_seed=split_seed,
        source=path,
        split_rule="train = x[perm[:-validation_size]], validation = test = "
                   "x[perm[-validation_size:]], perm = RandomState(split_seed).permutation(n)",
        row_order="npy file order" if kind == "npy" else "sorted relative PNG paths",
    )


def _status_256(data_dir: Path | None) -> DatasetStatus:
    found = find_ffhq256(data_dir)
    if found is None:
        return DatasetStatus("ffhq256", None, hint(HOW_TO_GET_256, data_dir), None, "-", True)
    kind, path = found
    if kind == "npy":
        n = npy_rows(path)
        checksums = cached_state((path,), DigestCache(primary_root(data_dir)))
    else:
        n = len(list_images(path, recursive=True))
        checksums = "listing only"
    sizes = default_split_sizes(n, VALIDATION_SIZE_256, n, test_is_validation=True)
    return DatasetStatus("ffhq256", path, hint(HOW_TO_GET_256, data_dir), sizes, checksums, True,
                         note=f"split seed {SPLIT_SEED_256}; test = validation; {kind}")


def find_ffhq1024(data_dir: Path | None) -> Path | None:
    for directory in data_dirs("ffhq1024", data_dir):
        if (directory / "train").is_dir() and (directory / "valid").is_dir():
            return directory
    return None


@register_dataset("ffhq1024", status=lambda data_dir: _status_1024(data_dir),
                  description="FFHQ faces 1024x1024 (PNG folders)")
def load_ffhq1024(data_dir: Path | None):
    how = hint(HOW_TO_GET_1024, data_dir)
    directory = find_ffhq1024(data_dir)
    if directory is None:
        raise UserError(f"dataset 'ffhq1024': train/ and valid/ folders not found in "
                        f"{describe_dirs(data_dirs('ffhq1024', data_dir))}; {how}")
    train_files = list_images(directory / "train", recursive=True)
    valid_files = list_images(directory / "valid", recursive=True)
    for folder, files in (("train", train_files), ("valid", valid_files)):
        if not files:
            raise UserError(f"dataset 'ffhq1024': {directory / folder} holds no PNG/JPEG "
                            f"images; {how}")
    valid = LazyImages(FileSource(valid_files, "RGB", (1024, 1024)))
    return make_splits(
        "ffhq1024",
        train=LazyImages(FileSource(train_files, "RGB", (1024, 1024))),
        validation=valid,
        test=valid,
        version="FFHQ 1024x1024 (Karras et al. 2019), PNG",
        comparable=len(train_files) == 65000 and len(valid_files) == 5000,
        files={"train/": listing_digest(train_files, directory / "train"),
               "valid/": listing_digest(valid_files, directory / "valid")},
        checksums_verified=False,
        checksum_note="PNG folders: sha256 of the sorted (name, size) listing, contents not "
                      "hashed",
        split_seed=None,
        source=directory,
        split_rule="train = train/, validation = test = valid/ (sorted relative paths)",
    )


def _status_1024(data_dir: Path | None) -> DatasetStatus:
    directory = find_ffhq1024(data_dir)
    if directory is None:
        return DatasetStatus("ffhq1024", None, hint(HOW_TO_GET_1024, data_dir), None, "-", True)
    n_train = len(list_images(directory / "train", recursive=True))
    n_valid = len(list_images(directory / "valid", recursive=True))
    return DatasetStatus("ffhq1024", directory, hint(HOW_TO_GET_1024, data_dir),
                         {"train": n_train, "validation": n_valid, "test": n_valid},
                         "listing only", True, note="test = validation")
