"""CIFAR-10: python-version pickles read safely, the reference split, archive handling."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
from data_fixtures import (cifar_archive_bytes, cifar_batches, data_root,  # noqa: F401
                           decode_index, write_cifar_dir)

from harness.data import cifar, load_dataset, splits
from harness.errors import UserError

PER_BATCH, N_TEST, N_VAL = 8, 6, 7  # 40 training images


@pytest.fixture
def batches(monkeypatch) -> dict[str, bytes]:
    files = cifar_batches(PER_BATCH, N_TEST)
    monkeypatch.setattr(cifar, "BATCH_MD5", {n: hashlib.md5(d).hexdigest()
                                             for n, d in files.items()})
    return files


def test_split_function_is_the_reference_one_at_full_size():
    # Full size is cheap with one "pixel" per image: the value is the image's index.
    train_rows = np.arange(50000)
    keep, held_out = splits.split_first(50000, cifar.SPLIT_SEED, 5000, what="cifar10")
    perm = np.random.RandomState(11172018).permutation(50000)
    np.testing.assert_array_equal(train_rows[held_out], perm[:5000])
    np.testing.assert_array_equal(train_rows[keep], perm[5000:])
    assert len(set(keep) | set(held_out)) == 50000


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_loader_applies_the_reference_split(data_root, batches, layout):
    if layout == "folder":
        write_cifar_dir(data_root / "cifar10", batches)
    else:
        (data_root / "cifar10").mkdir()
        (data_root / "cifar10" / cifar.ARCHIVE).write_bytes(cifar_archive_bytes(batches))
    loaded = load_dataset("cifar10", validation_size=N_VAL)
    perm = np.random.RandomState(11172018).permutation(5 * PER_BATCH)
    # Pixel values encode the row index in the concatenated data_batch_1..5.
    np.testing.assert_array_equal(decode_index(loaded.validation), perm[:N_VAL])
    np.testing.assert_array_equal(decode_index(loaded.train), perm[N_VAL:])
    np.testing.assert_array_equal(decode_index(loaded.test), np.arange(N_TEST))
    assert loaded.image_shape == (3, 32, 32)
    assert loaded.provenance["checksums_verified"] is True
    assert loaded.provenance["split_seed"] == 11172018
    assert set(loaded.provenance["files"]) == set(batches)


def test_rows_are_rgb_planes(data_root, batches):
    write_cifar_dir(data_root / "cifar10", batches)
    loaded = load_dataset("cifar10", validation_size=N_VAL)
    rows = pickle.loads(batches["test_batch"], encoding="bytes")[b"data"]
    np.testing.assert_array_equal(loaded.test[2, 1].numpy().ravel(), rows[2, 1024:2048])


class _RunsShell:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsShell()
    payload.marker = marker
    evil = pickle.dumps({"data": payload}, protocol=2)
    with pytest.raises(UserError, match=r"refusing to unpickle '(posix|nt).system'"):
        cifar.unpickle_batch(evil, "evil_batch")
    assert not marker.exists()


def test_malicious_batch_in_a_dataset_is_refused(data_root, batches, tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsShell()
    payload.marker = marker
    batches = dict(batches, data_batch_3=pickle.dumps({"data": payload}, protocol=2))
    write_cifar_dir(data_root / "cifar10", batches)
    with pytest.raises(UserError, match="checksum mismatch for data_batch_3"):
        load_dataset("cifar10", validation_size=N_VAL)  # md5 catches it first
    with pytest.raises(UserError, match=r"data_batch_3: refusing to unpickle"):
        load_dataset("cifar10", validation_size=N_VAL, verify_checksums=False)
    assert not marker.exists()


def test_other_globals_are_refused_too():
    evil = pickle.dumps({"data": np.float64(1.0)}, protocol=2)  # numpy scalar: not allowed
    with pytest.raises(UserError, match="refusing to unpickle"):
        cifar.unpickle_batch(evil, "b")


def test_truncated_archive_is_a_user_error(data_root, batches):
    (data_root / "cifar10").mkdir()
    archive = data_root / "cifar10" / cifar.ARCHIVE
    archive.write_bytes(cifar_archive_bytes(batches)[:-300])
    with pytest.raises(UserError, match=r"cifar-10-python.tar.gz: truncated or corrupt archive"):
        load_dataset("cifar10", validation_size=N_VAL)


def test_garbage_pickle_and_wrong_rows_are_user_errors():
    with pytest.raises(UserError, match="not a readable CIFAR-10 batch"):
        cifar.unpickle_batch(b"\x80\x02}q\x00(", "b")
    wrong = pickle.dumps({"data": [1, 2, 3]}, protocol=2)
    with pytest.raises(UserError, match="expected a dict with 'data'"):
        cifar.unpickle_batch(wrong, "b")


def test_missing_cifar_says_how_to_get_it(data_root):
    with pytest.raises(UserError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10")


def test_batches_repickled_by_python3_numpy_also_load():
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    modern = pickle.dumps({"data": rows, "labels": [1, 2]}, protocol=4)  # numpy._core names
    np.testing.assert_array_equal(cifar.unpickle_batch(modern, "b"), rows)
