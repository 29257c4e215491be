"""Fuzzed data files: IDX, CIFAR pickles, npy and PNG folders, corrupted at random.
Each load either succeeds with the right shapes or raises one `UserError` naming the file; any
other exception (a traceback for the user) fails the test. Crafted pickles are refused and run
nothing: the side effect they would have had is checked to be absent."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_fixtures import (cifar_batches, data_root, encode_index, encode_index_nhwc,  # noqa: F401
                           idx_bytes, write_cifar_dir, write_png, write_png_folder)
from harness.data.cifar import NumpyOnlyUnpickler, unpickle_batch
from harness.data.registry import load_dataset
from harness.engine.checkpoint import read_checkpoint
from harness.errors import UserError

COUNTS: dict[str, int] = {}


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def corrupt(data: bytes, draw) -> bytes:
    """Truncate, flip bytes, or overwrite the header (magic, dims, sizes)."""
    kind = draw(st.sampled_from(["truncate", "flip", "header", "extend"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    buf = bytearray(data)
    limit = 16 if kind == "header" else len(buf)
    for _ in range(draw(st.integers(1, 4))):
        buf[draw(st.integers(0, min(limit, len(buf)) - 1))] = draw(st.integers(0, 255))
    return bytes(buf)


def _read_all(splits) -> None:
    """Touch every image: a lazy set's bad file must also fail as one line, not mid-training."""
    for images in (splits.train, splits.validation, splits.test):
        batch = images[np.arange(len(images))]
        assert tuple(batch.shape[1:]) == tuple(splits.image_shape)


def expect_user_error_or_ok(load, name: str, kind: str) -> None:
    try:
        splits = load()
        _read_all(splits)
    except UserError as error:
        message = str(error)
        assert "\n" not in message and message, message
        assert name in message or "dataset" in message, message  # says which file / dataset
        COUNTS[f"{kind} refused"] = COUNTS.get(f"{kind} refused", 0) + 1
        return
    assert len(splits.train) > 0 and len(splits.test) > 0
    COUNTS[f"{kind} loaded"] = COUNTS.get(f"{kind} loaded", 0) + 1


@fuzz(120)
@given(data=st.data())
def test_corrupted_idx_is_one_line(data_root, data):  # noqa: F811
    folder = data_root / "mnist"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    train, test = idx_bytes(encode_index(12, (28, 28))), idx_bytes(encode_index(4, (28, 28)))
    victim = data.draw(st.sampled_from(["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]))
    files = {"train-images-idx3-ubyte": train, "t10k-images-idx3-ubyte": test}
    files[victim] = corrupt(files[victim], data.draw)
    gz = data.draw(st.booleans())
    for stem, content in files.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (folder / stem).write_bytes(content)
    expect_user_error_or_ok(lambda: load_dataset("mnist", validation_size=2), victim, "idx")


@fuzz(100)
@given(data=st.data())
def test_corrupted_cifar_batch_is_one_line(data_root, data):  # noqa: F811
    folder = data_root / "cifar10"
    shutil.rmtree(folder, ignore_errors=True)
    files = cifar_batches(4, 4)
    victim = data.draw(st.sampled_from(sorted(files)))
    files[victim] = corrupt(files[victim], data.draw)
    write_cifar_dir(folder, files)
    expect_user_error_or_ok(lambda: load_dataset("cifar10", validation_size=2), victim, "cifar")


@fuzz(60)
@given(data=st.data())
def test_npy_of_wrong_dtype_shape_or_bytes_is_one_line(data_root, data):  # noqa: F811
    folder = data_root / "imagenet32"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    dtype = data.draw(st.sampled_from([np.uint8, np.uint8, np.float32, np.int64, np.bool_]))
    shape = data.draw(st.sampled_from([(6, 32, 32, 3), (6, 32, 32), (6, 3, 32, 32),
                                       (6, 16, 16, 3), (0, 32, 32, 3), (6, 32, 32, 4)]))
    train = np.zeros(shape, dtype=dtype)
    raw = io.BytesIO()
    np.save(raw, train)
    content = raw.getvalue()
    if data.draw(st.booleans()):
        content = corrupt(content, data.draw)
    (folder / "imagenet32-train.npy").write_bytes(content)
    np.save(folder / "imagenet32-valid.npy", encode_index_nhwc(3, 32, 32))
    expect_user_error_or_ok(lambda: load_dataset("imagenet32", validation_size=2),
                            "imagenet32-train.npy", "npy")


@fuzz(30)
@given(data=st.data())
def test_png_folder_with_mixed_sizes_or_non_images_is_one_line(data_root, data):  # noqa: F811
    folder = data_root / "pictures"
    shutil.rmtree(folder, ignore_errors=True)
    write_png_folder(folder, 6, 8)
    intruder = data.draw(st.sampled_from(["bigger.png", "notes.txt", "fake.png", "cut.png",
                                          "grey.png"]))
    if intruder == "bigger.png":
        write_png(folder / intruder, np.zeros((9, 8, 3), np.uint8))
    elif intruder == "grey.png":
        write_png(folder / intruder, np.zeros((8, 8), np.uint8))
    elif intruder == "cut.png":
        good = (folder / "00000.png").read_bytes()
        (folder / intruder).write_bytes(good[:data.draw(st.integers(0, len(good) - 1))])
    else:
        (folder / intruder).write_bytes(data.draw(st.binary(max_size=64)))
    expect_user_error_or_ok(lambda: load_dataset("image_folder", path=str(folder),
                                                 validation_size=1, test_size=1),
                            intruder, "png")


# --------------------------------------------------------------------------- crafted pickles


class _Payload:
    """Pickles to `os.system("touch MARK")` (protocol-level: a __reduce__ payload)."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


class _Nested:
    """A dict whose 'data' holds a numpy array and, deeper, a payload: a nested global."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (dict, ([(b"data", np.zeros((1, 3072), np.uint8)),
                        (b"labels", [[_Payload(self.mark)]])],))


def crafted(mark: Path) -> dict[str, bytes]:
    return {
        "reduce": pickle.dumps(_Payload(mark), protocol=2),
        "nested": pickle.dumps(_Nested(mark), protocol=2),
        "builtins_eval": (b"cbuiltins\neval\n(V__import__('os').system('touch " +
                          str(mark).encode() + b"')\ntR."),
        "exec_in_dict": pickle.dumps({b"data": _Payload(mark)}, protocol=4),
        "subprocess": (b"csubprocess\ncall\n((Vtouch\nV" + str(mark).encode() + b"\nltR."),
        "numpy_load": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                    b"x": _Payload(mark)}, protocol=2),
    }


@pytest.mark.parametrize("name", sorted(crafted(Path("/x"))))
def test_crafted_pickles_are_refused_and_run_nothing(tmp_path, name):
    mark = tmp_path / "executed"
    payload = crafted(mark)[name]
    with pytest.raises(UserError, match="refusing to unpickle|not a readable CIFAR-10 batch"):
        unpickle_batch(payload, "data_batch_1")
    with pytest.raises(UserError):
        NumpyOnlyUnpickler(payload, "data_batch_1").load()
    assert not mark.exists(), "the payload ran"
    COUNTS["crafted pickles refused"] = COUNTS.get("crafted pickles refused", 0) + 1


@pytest.mark.parametrize("name", sorted(crafted(Path("/x"))))
def test_crafted_checkpoints_are_refused_by_weights_only_loading(tmp_path, name):
    mark = tmp_path / "executed"
    payload = crafted(mark)[name]
    # The same payloads inside torch's zip container, as a checkpoint file would carry them.
    path = tmp_path / "step-2.pt"
    buffer = io.BytesIO()
    torch.save({"step": 2}, buffer)
    path.write_bytes(buffer.getvalue())
    state = read_checkpoint(path)
    assert state == {"step": 2}
    import zipfile
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        entries = {info.filename: source.read(info.filename) for info in source.infolist()}
    poisoned = io.BytesIO()
    with zipfile.ZipFile(poisoned, "w") as target:
        for filename, content in entries.items():
            target.writestr(filename, payload if filename.endswith("data.pkl") else content)
    path.write_bytes(poisoned.getvalue())
    with pytest.raises(ValueError, match="torch.load failed"):
        read_checkpoint(path)
    assert not mark.exists(), "the payload ran"
    COUNTS["crafted checkpoints refused"] = COUNTS.get("crafted checkpoints refused", 0) + 1


def test_data_fuzz_figures(capsys):
    if COUNTS:
        with capsys.disabled():
            print(f"\ndata fuzz: {sum(COUNTS.values())} cases, {dict(sorted(COUNTS.items()))}")
