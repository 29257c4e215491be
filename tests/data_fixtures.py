"""Tiny dataset files in each real on-disk format, written by the tests themselves.

Pixel values encode the image's index in its file (`encode_index`), so a test can read back
which source image landed where and compare the split with the reference permutation.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest


def encode_index(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """`(n, *shape)` uint8 images whose first two pixels spell the index (low byte, high byte)."""
    images = np.zeros((n,) + shape, dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = np.arange(n) % 256
    flat[:, 1] = np.arange(n) // 256
    flat[:, 2:] = (np.arange(n)[:, None] * 7 + np.arange(flat.shape[1] - 2)) % 251
    return images


def decode_index(images) -> np.ndarray:
    """Inverse of `encode_index` for `(B, C, H, W)` or `(B, H, W, C)` tensors/arrays in the
    same element order as written."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.int64)
    return flat[:, 0] + 256 * flat[:, 1]


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def idx_bytes(images: np.ndarray) -> bytes:
    """IDX3 unsigned-byte file content for `(N, H, W)` uint8 images."""
    return b"\x00\x00\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes()


def write_idx_dataset(directory: Path, n_train: int, n_test: int, *, gz: bool = True,
                      size: int = 28) -> dict[str, bytes]:
    """train/t10k image files; returns the decompressed bytes by stem."""
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "train-images-idx3-ubyte": idx_bytes(encode_index(n_train, (size, size))),
        "t10k-images-idx3-ubyte": idx_bytes(encode_index(n_test, (size, size))),
    }
    for stem, data in contents.items():
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / stem).write_bytes(data)
    return contents


# ---------------------------------------------------------------- CIFAR-10 python pickles

def _py2_string(data: bytes) -> bytes:
    """A Python-2 `str` (SHORT_BINSTRING / BINSTRING), as cPickle protocol 2 writes it."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _py2_ndarray(array: np.ndarray) -> bytes:
    """An ndarray the way numpy 1 under Python 2 pickled it (numpy.core.multiarray names)."""
    assert array.dtype == np.uint8
    dtype = (b"cnumpy\ndtype\n" + _py2_string(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_string(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
             + _py2_int(0) + b"tb")
    shape = b"(" + b"".join(_py2_int(s) for s in array.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
            + _py2_int(0) + b"\x85" + _py2_string(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + shape + dtype + b"\x89"
            + _py2_string(np.ascontiguousarray(array).tobytes()) + b"tb")


def py2_batch_pickle(rows: np.ndarray, labels: list[int], batch_label: bytes) -> bytes:
    """A CIFAR-10 batch file: `{'batch_label', 'labels', 'data', 'filenames'}`, protocol 2."""
    body = (_py2_string(b"batch_label") + _py2_string(batch_label)
            + _py2_string(b"labels") + b"](" + b"".join(_py2_int(v) for v in labels) + b"e"
            + _py2_string(b"data") + _py2_ndarray(rows)
            + _py2_string(b"filenames") + b"](" + b"".join(
                _py2_string(f"img_{i}.png".encode()) for i in range(len(labels))) + b"e")
    return b"\x80\x02}(" + body + b"u."


def cifar_batches(n_per_batch: int, n_test: int) -> dict[str, bytes]:
    """Pickled batches whose rows encode their index in the concatenated training set."""
    train = encode_index(5 * n_per_batch, (3072,))
    files = {}
    for i in range(5):
        rows = train[i * n_per_batch:(i + 1) * n_per_batch]
        files[f"data_batch_{i + 1}"] = py2_batch_pickle(
            rows, [j % 10 for j in range(len(rows))], f"training batch {i + 1} of 5".encode())
    files["test_batch"] = py2_batch_pickle(encode_index(n_test, (3072,)),
                                           [j % 10 for j in range(n_test)],
                                           b"testing batch 1 of 1")
    return files


def write_cifar_dir(directory: Path, files: dict[str, bytes]) -> Path:
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def cifar_archive_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ---------------------------------------------------------------- image files

def write_png(path: Path, pixels: np.ndarray) -> None:
    """`(H, W)` grey or `(H, W, 3)` RGB uint8 pixels as a PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# ---------------------------------------------------------------- isolation


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A fresh harness data directory; nothing installed on the machine is visible, no network.

    Sets `$HARNESS_DATA`, runs in an empty working directory (so `./data` is empty), hides the
    system folders (e.g. Debian's Fashion-MNIST) and turns downloads off.
    """
    from harness.data import paths

    root = tmp_path / "harness-data"
    root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HARNESS_DATA", str(root))
    monkeypatch.setenv("HARNESS_DOWNLOAD", "0")
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {})
    return root


def encode_index_nhwc(n: int, height: int, width: int) -> np.ndarray:
    """`(n, H, W, 3)` images that read back through NHWC->NCHW as `encode_index` images."""
    return np.ascontiguousarray(encode_index(n, (3, height, width)).transpose(0, 2, 3, 1))


def write_png_folder(folder: Path, n: int, size: int, *, start: int = 0) -> None:
    """`n` RGB PNGs `00000.png`... whose pixels encode their index (from `start`)."""
    images = encode_index_nhwc(start + n, size, size)[start:]
    for i, pixels in enumerate(images):
        write_png(folder / f"{start + i:05d}.png", pixels)
