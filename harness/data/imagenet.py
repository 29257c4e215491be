"""ImageNet 32x32 and 64x64: the old "small ImageNet" benchmark and the newer npz version.

`imagenet32` / `imagenet64` (van den Oord et al. 2016, the numbers papers report): the VDVAE
setup's `imagenet{r}-train.npy` / `imagenet{r}-valid.npy` (uint8 N, r, r, 3), or the PNG
folders `train_{r}x{r}/` and `valid_{r}x{r}/` they were built from (sorted file names; the npy
row order may differ, so the validation split then differs, while test is the same images).
Split (the reference's): `perm = RandomState(42).permutation(n_train)`, validation =
`x[perm[-5000:]]`, train = `x[perm[:-5000]]`; test = the official valid set (49,999 images).

`imagenet32_downsampled` / `imagenet64_downsampled` (Chrabaszcz et al. 2017, image-net.org
`Imagenet{r}_train_npz.zip`, box-downsampled, 50,000 validation images): easier for likelihood
models and NOT comparable with the benchmark; provenance and the table say so. Same seed-42
split of train; test = `val_data.npz`. The npz batches cannot be memory-mapped, so they are
converted once into `.npy` files under `<data dir>/<name>/cache/` and mapped from there.

Everything is memory-mapped or decoded per batch (`LazyImages`); no copy of a whole set is made.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from harness import atomic
from harness.data.checksum import DigestCache, cached_state, digest_file, listing_digest
from harness.data.folder import count_images, list_images
from harness.data.lazy import ArraySource, FileSource, LazyImages
from harness.data.npy import npy_rows, open_npy, write_npy_stream
from harness.data.paths import data_dirs, describe_dirs, download_dir, hint, primary_root
from harness.data.registry import (DatasetStatus, check_int, default_split_sizes, make_splits,
                                   register_dataset)
from harness.data.splits import split_last
from harness.errors import UserError

SPLIT_SEED = 42
VALIDATION_SIZE = 5000
BENCHMARK_TEST_SIZE = 49999


# ---------------------------------------------------------------- the benchmark version

def _how_to_get(res: int) -> str:
    return (f"put imagenet{res}-train.npy and imagenet{res}-valid.npy (or the PNG folders "
            f"train_{res}x{res}/ and valid_{res}x{res}/ of van den Oord et al.) in "
            f"{{root}}/imagenet{res}")


def find_benchmark(res: int, data_dir: Path | None) -> tuple[str, Path, Path] | None:
    """("npy", train file, valid file) or ("png", train folder, valid folder)."""
    name = f"imagenet{res}"
    for directory in data_dirs(name, data_dir, (name, "")):
        train, valid = directory / f"{name}-train.npy", directory / f"{name}-valid.npy"
        if train.is_file() and valid.is_file():
            return "npy", train, valid
        train, valid = directory / f"train_{res}x{res}", directory / f"valid_{res}x{res}"
        if train.is_dir() and valid.is_dir():
            return "png", train, valid
    return None


def _load_benchmark(res: int, data_dir: Path | None, split_seed: int, validation_size: int):
    name = f"imagenet{res}"
    check_int(name, "split_seed", split_seed)
    check_int(name, "validation_size", validation_size)
    found = find_benchmark(res, data_dir)
    if found is None:
        raise UserError(f"dataset '{name}': not found in "
                        f"{describe_dirs(data_dirs(name, data_dir, (name, '')))}; "
                        f"{hint(_how_to_get(res), data_dir)}")
    kind, train_path, valid_path = found
    if kind == "npy":
        fix = f"replace it; {hint(_how_to_get(res), data_dir)}"
        train_source = ArraySource(open_npy(train_path, (res, res), how_to_fix=fix), "NHWC",
                                   train_path)
        test_source = ArraySource(open_npy(valid_path, (res, res), how_to_fix=fix), "NHWC",
                                  valid_path)
        cache = DigestCache(primary_root(data_dir))
        try:
            files = {p.name: digest_file(p, ("sha256",), cache)["sha256"]
                     for p in (train_path, valid_path)}
        finally:
            cache.save()
        note = "sha256 of the .npy files; no published reference"
    else:
        train_files = list_images(train_path, recursive=False)
        test_files = list_images(valid_path, recursive=False)
        train_source = FileSource(train_files, "RGB", (res, res))
        test_source = FileSource(test_files, "RGB", (res, res))
        files = {f"{train_path.name}/": listing_digest(train_files, train_path),
                 f"{valid_path.name}/": listing_digest(test_files, valid_path)}
        note = "PNG folders: sha256 of the sorted (name, size) listing, contents not hashed"
    n_train = train_source.shape[0]
    keep, held_out = split_last(n_train, split_seed, validation_size, what=f"dataset '{name}'")
    standard = (test_source.shape[0] == BENCHMARK_TEST_SIZE and split_seed == SPLIT_SEED
                and validation_size == VALIDATION_SIZE)
    return make_splits(
        name,
        train=LazyImages(train_source, keep),
        validation=LazyImages(train_source, held_out),
        test=LazyImages(test_source),
        version=f"small ImageNet {res}x{res} (van den Oord et al. 2016), {kind}",
        comparable=standard,
        files=files,
        checksums_verified=False,
        checksum_note=note,
        split_seed=split_seed,
        source=train_path.parent,
        split_rule="validation = x[perm[-validation_size:]], train = x[perm[:-validation_size]], "
                   "perm = RandomState(split_seed).permutation(n_train); test = official valid",
        row_order="npy file order" if kind == "npy" else "sorted PNG file names",
    )


def _status_benchmark(res: int, data_dir: Path | None) -> DatasetStatus:
    name = f"imagenet{res}"
    found = find_benchmark(res, data_dir)
    if found is None:
        return DatasetStatus(name, None, hint(_how_to_get(res), data_dir), None, "-", True)
    kind, train_path, valid_path = found
    if kind == "npy":
        n_train, n_test = npy_rows(train_path), npy_rows(valid_path)
        checksums = cached_state((train_path, valid_path), DigestCache(primary_root(data_dir)))
    else:
        n_train, n_test = count_images(train_path), count_images(valid_path)
        checksums = "listing only"
    sizes = default_split_sizes(n_train, VALIDATION_SIZE, n_test)
    return DatasetStatus(name, train_path.parent, hint(_how_to_get(res), data_dir), sizes,
                         checksums, True, note=f"split seed {SPLIT_SEED}; {kind}")


def _register_benchmark(res: int) -> None:
    @register_dataset(f"imagenet{res}", status=lambda data_dir: _status_benchmark(res, data_dir),
                      description=f"small ImageNet {res}x{res} benchmark (Oord et al. 2016)")
    def load(data_dir: Path | None, *, split_seed: int = SPLIT_SEED,
             validation_size: int = VALIDATION_SIZE):
        return _load_benchmark(res, data_dir, split_seed, validation_size)


_register_benchmark(32)
_register_benchmark(64)


# ---------------------------------------------------------------- the newer npz version

def _ds_name(res: int) -> str:
    return f"imagenet{res}_downsampled"


def _ds_how_to_get(res: int) -> str:
    archives = (f"Imagenet{res}_train_npz.zip" if res == 32 else
                "Imagenet64_train_part1_npz.zip and Imagenet64_train_part2_npz.zip")
    return (f"unzip {archives} and Imagenet{res}_val_npz.zip (image-net.org, Downsampled "
            f"ImageNet) into {{root}}/{_ds_name(res)}")


def find_npz(res: int, data_dir: Path | None) -> tuple[list[Path], Path] | None:
    """(train batches in batch-number order, val_data.npz)."""
    for directory in data_dirs(_ds_name(res), data_dir):
        val = directory / "val_data.npz"
        if not val.is_file():
            continue
        batches = [p for p in directory.glob("train_data_batch_*.npz")
                   if re.fullmatch(r"train_data_batch_\d+\.npz", p.name)]
        if batches:
            return sorted(batches, key=lambda p: int(p.stem.rsplit("_", 1)[1])), val
    return None


def npz_data_shape(file: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the `data` array in an npz, read from its header only."""
    try:
        with zipfile.ZipFile(file) as archive, archive.open("data.npy") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read = (np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(handle)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError) as error:
        raise UserError(f"{file}: not a Downsampled-ImageNet npz with a 'data' array ({error}); "
                        "unzip the archive again") from None
    return shape, dtype


def _rows(file: Path, res: int) -> np.ndarray:
    """One npz's images `(B, 3, res, res)`: rows are red, green, blue planes, like CIFAR."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            data = archive["data"]
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError) as error:
        raise UserError(f"{file}: unreadable npz ({error}); unzip the archive again") from None
    return data.reshape(-1, 3, res, res)


def _convert(res: int, sources: list[Path], target: Path) -> None:
    """Concatenate the npz batches into one NCHW `.npy` (streamed, atomic)."""
    shapes = []
    for file in sources:
        shape, dtype = npz_data_shape(file)
        if dtype != np.uint8 or len(shape) != 2 or shape[1] != 3 * res * res:
            raise UserError(f"{file}: 'data' is {dtype} {shape}, expected uint8 (N, "
                            f"{3 * res * res}); is it the {res}x{res} version?")
        shapes.append(shape[0])
    write_npy_stream(target, (sum(shapes), 3, res, res), (_rows(f, res) for f in sources))


def _cached_arrays(res: int, data_dir: Path | None, train: list[Path], val: Path
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped NCHW train and test arrays, converting the npz files when needed."""
    cache_dir = download_dir(_ds_name(res), data_dir) / "cache"
    stamp = {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in train + [val]}
    record = cache_dir / "cache.json"
    targets = {"train": cache_dir / "train.npy", "test": cache_dir / "test.npy"}
    current = None
    if record.is_file():
        try:
            current = json.loads(record.read_text(encoding="utf-8"))
        except ValueError:
            current = None
    if current != stamp or not all(t.is_file() for t in targets.values()):
        _convert(res, train, targets["train"])
        _convert(res, [val], targets["test"])
        atomic.write_json(record, stamp)
    arrays = [np.load(targets[k], mmap_mode="r") for k in ("train", "test")]
    assert all(a.dtype == np.uint8 and a.shape[1:] == (3, res, res) for a in arrays)
    return arrays[0], arrays[1]


def _load_npz(res: int, data_dir: Path | None, split_seed: int, validation_size: int):
    name = _ds_name(res)
    check_int(name, "split_seed", split_seed)
    check_int(name, "validation_size", validation_size)
    found = find_npz(res, data_dir)
    if found is None:
        raise UserError(f"dataset '{name}': train_data_batch_*.npz and val_data.npz not found in "
                        f"{describe_dirs(data_dirs(name, data_dir))}; "
                        f"{hint(_ds_how_to_get(res), data_dir)}")
    train_files, val_file = found
    train_array, test_array = _cached_arrays(res, data_dir, train_files, val_file)
    cache = DigestCache(primary_root(data_dir))
    try:
        files = {p.name: digest_file(p, ("sha256",), cache)["sha256"]
                 for p in train_files + [val_file]}
    finally:
        cache.save()
    cache_dir = download_dir(name, data_dir) / "cache"
    train_source = ArraySource(train_array, "NCHW", cache_dir / "train.npy")
    keep, held_out = split_last(len(train_array), split_seed, validation_size,
                                what=f"dataset '{name}'")
    return make_splits(
        name,
        train=LazyImages(train_source, keep),
        validation=LazyImages(train_source, held_out),
        test=LazyImages(ArraySource(test_array, "NCHW", cache_dir / "test.npy")),
        version=f"Downsampled ImageNet {res}x{res} npz (Chrabaszcz et al. 2017, box filter)",
        comparable=False,
        files=files,
        checksums_verified=False,
        checksum_note="sha256 of the npz files; no published reference. Not the benchmark "
                      "version: never compare with imagenet32/64 numbers",
        split_seed=split_seed,
        source=val_file.parent,
        split_rule="validation = x[perm[-validation_size:]], train = x[perm[:-validation_size]], "
                   "perm = RandomState(split_seed).permutation(n_train), batches in order; "
                   "test = val_data.npz",
    )


def _status_npz(res: int, data_dir: Path | None) -> DatasetStatus:
    name = _ds_name(res)
    found = find_npz(res, data_dir)
    note = "newer box-downsampled version, NOT comparable to the benchmark"
    if found is None:
        return DatasetStatus(name, None, hint(_ds_how_to_get(res), data_dir), None, "-", False,
                             note=note)
    train_files, val_file = found
    try:
        n_train = sum(npz_data_shape(f)[0][0] for f in train_files)
        n_test = npz_data_shape(val_file)[0][0]
        sizes = default_split_sizes(n_train, VALIDATION_SIZE, n_test)
    except UserError as error:
        return DatasetStatus(name, val_file.parent, hint(_ds_how_to_get(res), data_dir), None,
                             f"ERROR: {error}", False, note=note)
    return DatasetStatus(name, val_file.parent, hint(_ds_how_to_get(res), data_dir), sizes,
                         cached_state(train_files + [val_file],
                                      DigestCache(primary_root(data_dir))), False, note=note)


def _register_npz(res: int) -> None:
    @register_dataset(_ds_name(res), status=lambda data_dir: _status_npz(res, data_dir),
                      description=f"ImageNet {res}x{res} npz (Chrabaszcz 2017), not comparable")
    def load(data_dir: Path | None, *, split_seed: int = SPLIT_SEED,
             validation_size: int = VALIDATION_SIZE):
        return _load_npz(res, data_dir, split_seed, validation_size)


_register_npz(32)
_register_npz(64)
