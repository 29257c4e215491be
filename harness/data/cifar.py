"""CIFAR-10, python version: `cifar-10-batches-py/` pickles or `cifar-10-python.tar.gz`.

Split (the reference's sklearn `train_test_split(test_size=5000,
random_state=11172018)`): `perm = RandomState(11172018).permutation(50000)`,
validation = `x[perm[:5000]]`, train = `x[perm[5000:]]`; test = the official `test_batch`.
Rows are stored as (N, 3072) = red, green, blue planes of 32x32, so they reshape to
(N, 3, 32, 32) directly.

The batches are Python-2 pickles. They are read by `NumpyOnlyUnpickler`, which resolves only the
numpy names an array needs and refuses every other global, so a tampered file cannot run code.
The archive is read member by member, never extracted (no path traversal).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from harness.data import download as dl
from harness.data.checksum import DigestCache, digest_file
from harness.data.paths import data_dirs, describe_dirs, download_dir, hint, primary_root
from harness.data.registry import DatasetStatus, check_int, make_splits, register_dataset
from harness.data.splits import split_first
from harness.errors import UserError

NAME = "cifar10"
SUBDIRS = ("cifar10", "")  # <root>/cifar10/... or the torchvision layout <root>/cifar-10-...
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/"
SPLIT_SEED = 11172018
VALIDATION_SIZE = 5000
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# md5 published on the CIFAR page (archive) and used by torchvision (batches). Tests replace them.
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
HOW_TO_GET = ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into "
              "{root}/cifar10 (downloaded automatically when online)")

# (module, name) pairs a pickled ndarray refers to. numpy 2 renamed numpy.core to numpy._core;
# files written by numpy 1 (and Python 2) name the old module.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray",
                                                 "numpy.core.multiarray"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers and nothing else."""

    def __init__(self, data: bytes, source: str):
        # encoding="bytes": Python-2 str objects (keys and array buffers) stay bytes.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        modules = _ALLOWED_GLOBALS.get((module, name))
        if modules is None:
            raise UserError(f"{self.source}: refusing to unpickle '{module}.{name}' (only numpy "
                            "arrays are allowed); the file is not a genuine CIFAR-10 batch, "
                            "delete it and download it again")
        for candidate in modules:
            try:
                return getattr(importlib.import_module(candidate), name)
            except ImportError:
                continue
        raise AssertionError(f"numpy provides none of {modules}")


def unpickle_batch(data: bytes, source: str) -> np.ndarray:
    """One CIFAR batch pickle -> its image rows `(N, 3072)` uint8."""
    try:
        batch = NumpyOnlyUnpickler(data, source).load()
    except UserError:
        raise
    except Exception as error:  # any malformed pickle: EOF, bad opcode, bad array state, ...
        raise UserError(f"{source}: not a readable CIFAR-10 batch ({type(error).__name__}: "
                        f"{error}); delete it and download it again") from None
    rows = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.uint8 and rows.ndim == 2
            and rows.shape[1] == 3072):
        raise UserError(f"{source}: expected a dict with 'data' of uint8 (N, 3072) rows; "
                        "the file is not a CIFAR-10 python batch")
    return rows


def find_source(data_dir: Path | None) -> Path | None:
    """A directory holding the batch files, or the archive, whichever comes first."""
    for directory in data_dirs(NAME, data_dir, SUBDIRS):
        for batches in (directory / FOLDER, directory):
            if all((batches / name).is_file() for name in TRAIN_BATCHES + (TEST_BATCH,)):
                return batches
        if (directory / ARCHIVE).is_file():
            return directory / ARCHIVE
    return None


def read_batches(source: Path, how_to_get: str = HOW_TO_GET) -> dict[str, bytes]:
    """Raw bytes of the five training batches and the test batch."""
    wanted = TRAIN_BATCHES + (TEST_BATCH,)
    if source.is_dir():
        return {name: (source / name).read_bytes() for name in wanted}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:gz") as archive:
            for member in archive:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in found:
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
        raise UserError(f"{source}: truncated or corrupt archive ({error}); delete it and "
                        f"{how_to_get}") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise UserError(f"{source}: archive lacks {', '.join(missing)}; delete it and "
                        f"{how_to_get}")
    return found


@register_dataset(NAME, status=lambda data_dir: _status(data_dir),
                  description="CIFAR-10, 32x32 RGB")
def load_cifar10(data_dir: Path | None, *, split_seed: int = SPLIT_SEED,
                 validation_size: int = VALIDATION_SIZE, download: bool = True,
                 download_url: str | None = None, verify_checksums: bool = True):
    check_int(NAME, "split_seed", split_seed)
    check_int(NAME, "validation_size", validation_size)
    how = hint(HOW_TO_GET, data_dir)
    source = find_source(data_dir)
    if source is None:
        if not (download and dl.downloads_enabled()):
            raise UserError(f"dataset '{NAME}': neither {FOLDER}/ nor {ARCHIVE} found in "
                            f"{describe_dirs(data_dirs(NAME, data_dir, SUBDIRS))}; {how}")
        source = dl.download_file(dl.base_url(NAME, download_url, URL),
                                  dl.RemoteFile(ARCHIVE, md5=ARCHIVE_MD5),
                                  download_dir(NAME, data_dir), how_to_get=how)
    raw = read_batches(source, how)
    checksums, mismatched = {}, []
    for name, data in raw.items():
        checksums[name] = hashlib.sha256(data).hexdigest()
        if hashlib.md5(data).hexdigest() != BATCH_MD5.get(name):
            mismatched.append(name)
    if mismatched and verify_checksums:
        raise UserError(f"{source}: checksum mismatch for {', '.join(mismatched)}; the files are "
                        f"corrupt or another version. Delete them and {how}, or pass "
                        "verify_checksums=False to use them anyway (not comparable)")

    def images(name: str) -> np.ndarray:
        return unpickle_batch(raw[name], f"{source}:{name}")

    train_rows = np.concatenate([images(name) for name in TRAIN_BATCHES])  # (50000, 3072)
    test_rows = images(TEST_BATCH)  # (10000, 3072)
    del raw
    x = train_rows.reshape(-1, 3, 32, 32)  # (N, C, H, W): rows are R, G, B planes
    keep, held_out = split_first(len(x), split_seed, validation_size, what=f"dataset '{NAME}'")
    standard = (len(x) == 50000 and len(test_rows) == 10000 and split_seed == SPLIT_SEED
                and validation_size == VALIDATION_SIZE)
    return make_splits(
        NAME,
        train=torch.from_numpy(x[keep]),
        validation=torch.from_numpy(x[held_out]),
        test=torch.from_numpy(test_rows.reshape(-1, 3, 32, 32)),
        version="CIFAR-10 python version (Krizhevsky 2009)",
        comparable=standard and not mismatched,
        files=checksums,
        checksums_verified=not mismatched,
        checksum_note=("md5 of every batch matches the published value" if not mismatched else
                       f"md5 MISMATCH for {', '.join(mismatched)}; sha256 recorded"),
        split_seed=split_seed,
        source=source,
        split_rule="validation = x[perm[:validation_size]], train = x[perm[validation_size:]], "
                   "perm = RandomState(split_seed).permutation(50000); test = test_batch",
    )


def _status(data_dir: Path | None) -> DatasetStatus:
    source = find_source(data_dir)
    if source is None:
        return DatasetStatus(NAME, None, hint(HOW_TO_GET, data_dir), None, "-", True)
    cache = DigestCache(primary_root(data_dir))
    try:
        if source.is_dir():
            ok = all(digest_file(source / name, ("md5",), cache)["md5"] == md5
                     for name, md5 in BATCH_MD5.items())
        else:
            ok = digest_file(source, ("md5",), cache)["md5"] == ARCHIVE_MD5
    finally:
        cache.save()
    sizes = {"train": 45000, "validation": 5000, "test": 10000} if ok else None
    return DatasetStatus(NAME, source, hint(HOW_TO_GET, data_dir), sizes,
                         "verified" if ok else "MISMATCH", ok, note=f"split seed {SPLIT_SEED}")
