"""`load_images`: folders, `.npy` arrays and `DATASET:SPLIT[:N]`; one line per bad input."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import data_root, decode_index, encode_index, write_idx_dataset  # noqa: F401
from PIL import Image

from harness.data.sources import ImageSet, index_names, load_images
from harness.errors import UserError

N_TRAIN, N_TEST = 5010, 12  # mnist/fashion_mnist hold 5,000 images out for validation


def _png(path, array, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_split_takes_the_first_n_in_split_order(data_root):
    write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    whole = load_images("mnist:test")
    assert isinstance(whole, ImageSet) and whole.images.shape == (N_TEST, 1, 28, 28)
    assert whole.images.dtype == np.uint8
    np.testing.assert_array_equal(decode_index(whole.images), np.arange(N_TEST))
    assert whole.names[:2] == ["000000", "000001"] and whole.names == sorted(whole.names)

    first = load_images("mnist:test:5")
    np.testing.assert_array_equal(first.images, whole.images[:5])
    assert "first 5 of 12" in first.description
    all_of_it = load_images(f"mnist:test:{N_TEST}")  # N equal to the split's size is fine
    np.testing.assert_array_equal(all_of_it.images, whole.images)
    assert len(load_images("mnist:validation:3")) == 3


@pytest.mark.parametrize("spec, words", [
    ("mnist:test:13", ["asks for 13", "has 12", "at most 12"]),  # refused, not capped
    ("mnist:test:0", ["from 1 to 12", "'0'"]),
    ("mnist:test:-1", ["from 1 to 12", "'-1'"]),
    ("mnist:test:ten", ["'ten'"]),
    ("mnist:test:", ["from 1 to 12"]),
    ("mnist:tst", ["unknown split 'tst'", "train, validation, test"]),
    ("mnst:test", ["unknown dataset 'mnst'", "Did you mean 'mnist'", "fashion_mnist"]),
    ("image_folder:test", ["folder's path itself"]),
    ("mnist", ["no such file or folder", "mnist:test"]),
    ("no/such/folder", ["no/such/folder: no such file or folder", "DATASET:SPLIT"]),
    ("missing.npy", ["missing.npy: no such file"]),
])
def test_bad_specs_are_one_line(data_root, spec, words):
    write_idx_dataset(data_root / "mnist", N_TRAIN, N_TEST)
    with pytest.raises(UserError) as caught:
        load_images(spec)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_dataset_that_is_not_installed_says_so(data_root):
    with pytest.raises(UserError, match="cifar10"):
        load_images("cifar10:test:10")


def test_folder_reads_grey_and_colour_images_in_sorted_order(tmp_path):
    images = encode_index(3, (6, 9))  # (3, 6, 9): H=6, W=9
    for i in (2, 0, 1):
        _png(tmp_path / "grey" / f"s{i}.png", images[i], "L")
    grey = load_images(str(tmp_path / "grey"))
    assert grey.images.shape == (3, 1, 6, 9) and grey.names == ["s0.png", "s1.png", "s2.png"]
    np.testing.assert_array_equal(grey.images[:, 0], images)

    colour = np.stack([images, 255 - images, images // 2], axis=-1)  # (3, 6, 9, 3)
    for i in range(3):
        _png(tmp_path / "rgb" / "sub" / f"{i}.png", colour[i], "RGB")
    rgb = load_images(str(tmp_path / "rgb"))
    assert rgb.images.shape == (3, 3, 6, 9) and rgb.names[0] == "sub/0.png"
    np.testing.assert_array_equal(rgb.images, colour.transpose(0, 3, 1, 2))


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="empty: no .png/.jpg/.jpeg files"):
        load_images(str(tmp_path / "empty"))

    _png(tmp_path / "mixed" / "a.png", np.zeros((8, 8), np.uint8), "L")
    _png(tmp_path / "mixed" / "b.png", np.zeros((8, 10), np.uint8), "L")
    with pytest.raises(UserError, match=r"b.png: image is 10x8 \(WxH\) but .*a.png is 8x8"):
        load_images(str(tmp_path / "mixed"))

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="x.png: not a readable image"):
        load_images(str(tmp_path / "broken"))

    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(UserError, match="not a folder or a .npy file"):
        load_images(str(tmp_path / "plain.txt"))


def test_npy_round_trip_and_names(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "samples.npy", images)
    loaded = load_images(str(tmp_path / "samples.npy"))
    np.testing.assert_array_equal(loaded.images, images)
    assert loaded.names == ["000000", "000001", "000002", "000003"]
    assert loaded.image_shape == (3, 8, 8) and "4 images, 3x8x8" in loaded.description


@pytest.mark.parametrize("array, words", [
    (np.zeros((2, 1, 8, 8), np.float32), ["float32", "expected uint8 (N, C, H, W)"]),
    (np.zeros((2, 8, 8), np.uint8), ["(2, 8, 8)", "expected uint8 (N, C, H, W)"]),
    (np.zeros((2, 8, 8, 3), np.uint8), ["8 channels", "channels-last", "transpose(0, 3, 1, 2)"]),
    (np.zeros((0, 1, 8, 8), np.uint8), ["holds no images"]),
    (np.array([{"a": 1}], dtype=object), ["not a readable .npy"]),  # pickled: refused
])
def test_npy_errors(tmp_path, array, words):
    file = tmp_path / "bad.npy"
    np.save(file, array, allow_pickle=True)
    with pytest.raises(UserError) as caught:
        load_images(str(file))
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_index_names_sort_in_order():
    names = index_names(1_234_567)
    assert names[0] == "0000000" and names[-1] == "1234566"
    assert names[:12] == sorted(names[:12]) and len(set(len(n) for n in names)) == 1
    assert index_names(3) == ["000000", "000001", "000002"]
