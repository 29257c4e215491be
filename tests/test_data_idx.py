"""MNIST / Fashion-MNIST from IDX files, the registry's name and option checks."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from data_fixtures import data_root, decode_index, idx_bytes, write_idx_dataset  # noqa: F401

from harness.data import DatasetSplits, dataset_names, idx, load_dataset
from harness.errors import UserError

N_TRAIN, N_TEST, N_VAL = 60, 12, 10


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_mnist_split_matches_the_global_generator_recipe(data_root, gz):
    write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST, gz=gz)
    splits = load_dataset("mnist", split_seed=3, validation_size=N_VAL)

    np.random.seed(3)  # the reference recipe, on the legacy global generator
    perm = np.random.permutation(N_TRAIN)
    assert isinstance(splits, DatasetSplits)
    np.testing.assert_array_equal(decode_index(splits.train), perm[:-N_VAL])
    np.testing.assert_array_equal(decode_index(splits.validation), perm[-N_VAL:])
    np.testing.assert_array_equal(decode_index(splits.test), np.arange(N_TEST))
    assert splits.train.dtype == torch.uint8 and tuple(splits.train.shape) == (50, 1, 28, 28)
    assert splits.image_shape == (1, 28, 28) and splits.n_bits == 8
    assert splits.provenance["split_sizes"] == {"train": 50, "validation": 10, "test": 12}
    assert splits.provenance["split_seed"] == 3


def test_pixels_survive_the_round_trip(data_root):
    contents = write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    splits = load_dataset("mnist", validation_size=N_VAL)
    test_pixels = np.frombuffer(contents["t10k-images-idx3-ubyte"], np.uint8, offset=16)
    np.testing.assert_array_equal(splits.test.numpy().ravel(), test_pixels)


def test_provenance_is_json_and_records_checksums_honestly(data_root):
    contents = write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    splits = load_dataset("mnist", validation_size=N_VAL)
    record = json.loads(json.dumps(splits.provenance))
    assert record["dataset"] == "mnist" and record["version"]
    assert record["files"] == {stem: hashlib.sha256(data).hexdigest()
                               for stem, data in contents.items()}
    # Not the canonical archives, and no decompressed reference for MNIST: recorded, unverified.
    assert record["checksums_verified"] is False
    assert "not verified" in record["checksum_note"]
    assert record["comparable_to_published"] is False  # 60 images, not 60,000


def test_default_split_seed_is_recorded(data_root):
    write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    splits = load_dataset("mnist", validation_size=N_VAL)
    assert splits.provenance["split_seed"] == idx.DEFAULT_SPLIT_SEED == 0


def test_fashion_mnist_checksums_verified_when_they_match(data_root, monkeypatch):
    contents = write_idx_dataset(data_root / "fashion_mnist", N_TRAIN, N_TEST)
    monkeypatch.setattr(idx, "FASHION_MNIST_SHA256",
                        {stem: hashlib.sha256(data).hexdigest() for stem, data in contents.items()})
    splits = load_dataset("fashion_mnist", validation_size=N_VAL)
    assert splits.provenance["checksums_verified"] is True


def test_fashion_mnist_checksum_mismatch_is_a_user_error(data_root):
    write_idx_dataset(data_root / "fashion_mnist", N_TRAIN, N_TEST)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: checksum mismatch"):
        load_dataset("fashion_mnist", validation_size=N_VAL)
    # The escape hatch works and says the numbers are not comparable.
    splits = load_dataset("fashion_mnist", validation_size=N_VAL, verify_checksums=False)
    assert splits.provenance["checksums_verified"] is False
    assert splits.provenance["comparable_to_published"] is False


def test_truncated_gzip_is_a_user_error_naming_the_file(data_root):
    write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    file = data_root / "mnist" / "train-images-idx3-ubyte.gz"
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        load_dataset("mnist", validation_size=N_VAL)


def test_wrong_magic_and_wrong_length_are_user_errors(data_root):
    folder = data_root / "mnist"
    write_idx_dataset(folder, N_TRAIN, N_TEST, gz=False)
    train = folder / "train-images-idx3-ubyte"
    good = train.read_bytes()
    train.write_bytes(b"\x00\x00\x08\x01" + good[4:])  # a label file's magic
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: not an IDX image file"):
        load_dataset("mnist", validation_size=N_VAL)
    train.write_bytes(good[:-5])
    with pytest.raises(UserError, match=r"truncated or corrupt"):
        load_dataset("mnist", validation_size=N_VAL)


def test_missing_files_say_where_and_how(data_root):
    with pytest.raises(UserError) as error:
        load_dataset("fashion_mnist")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(data_root / "fashion_mnist") in message and "\n" not in message


def test_plain_file_is_preferred_and_found_in_dot_data(data_root, tmp_path):
    # ./data is searched after $HARNESS_DATA (cwd is tmp_path/work).
    write_idx_dataset(tmp_path / "work" / "data" / "mnist", N_TRAIN, N_TEST, gz=False)
    splits = load_dataset("mnist", validation_size=N_VAL)
    assert splits.provenance["source"] == str(tmp_path / "work" / "data" / "mnist")


def test_unknown_dataset_suggests_the_closest_name():
    with pytest.raises(UserError, match=r"unknown dataset 'fashon_mnist'\. Did you mean "
                                        r"'fashion_mnist'\?"):
        load_dataset("fashon_mnist")


def test_unknown_option_is_named(data_root):
    with pytest.raises(UserError, match=r"unknown option 'split_sed' for dataset 'mnist'\. "
                                        r"Did you mean 'split_seed'\?"):
        load_dataset("mnist", split_sed=1)


def test_bad_option_values_are_user_errors(data_root):
    write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    with pytest.raises(UserError, match="split_seed must be an integer"):
        load_dataset("mnist", split_seed="7")
    with pytest.raises(UserError, match="too few"):
        load_dataset("mnist", validation_size=N_TRAIN)


def test_registry_lists_every_dataset_of_the_spec():
    assert {"mnist", "fashion_mnist", "cifar10", "imagenet32", "imagenet64",
            "imagenet32_downsampled", "imagenet64_downsampled", "ffhq256", "ffhq1024",
            "image_folder"} <= set(dataset_names())
    assert dataset_names() == sorted(dataset_names())


def test_idx_parser_reads_what_the_writer_wrote():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(idx.parse_idx_images(idx_bytes(images), "x"), images)
